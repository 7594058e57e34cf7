"""The process a program runs in: its host allocator (`host_memory`), its logging
(`program_logging`), its compilation cache (`compilation_cache`), and what the processes of a
multi-process run do together, a lost peer included (`multihost`, `stderr_filter`).

Imports nothing else of the package."""
