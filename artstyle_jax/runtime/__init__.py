"""The process a program runs in: its host allocator (`host_memory`), its logging
(`program_logging`), and what the processes of a multi-process run do together (`multihost`).

Imports nothing else of the package."""
