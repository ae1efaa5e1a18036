"""The `idufleet` command line: thin click commands over library functions and the API client."""
