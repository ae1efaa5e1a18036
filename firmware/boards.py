"""The board table: every board the firmware runs on, one row each. startup.py reads it at boot
(and unloads it: heap.py BOOT) to load the board module; the flash tool and provisioning read the
same file on CPython (tools/flash.py) for the chip, the image and the bytecode architecture.

Adding a board: write its module to the contract in firmware/board.pyi (functions, units, and
`measures`, the metric ids it fills in) and add its row here. Nothing else names boards.
Plain literals only: tools/flash.py executes this file on CPython."""

# name: (module, sys.platform it reports, esptool chip (None: no image to write), image header
#        chip id, image offset in flash, mpy-cross -march (None: portable bytecode))
BOARDS = {
    "esp32": ("board_esp32", "esp32", "esp32", 0, 0x1000, "xtensawin"),
    # the MicroPython unix port: the simulator, the tests and the pseudo-terminal flash target
    "sim": ("board_sim", "linux", None, None, 0, None),
}
