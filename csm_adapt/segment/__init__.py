"""`csm-adapt segment`: long recordings -> clips at pauses + metadata.jsonl for the `json` reader.

May import: the foundation modules (`errors`, `audio_io`, `plugin_api`, `files`, `terminal`) only;
its output is a folder the `json` reader reads (tests/test_architecture.py enforces it).
"""
