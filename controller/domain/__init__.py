"""Pure controller logic: ingest checks, presence, batching, rollups, commands. Bytes, events and
values in, values out; never imports transport/, store/, api/ or anything doing I/O."""
