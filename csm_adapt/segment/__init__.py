"""`csm-adapt segment`: long recordings -> clips at pauses + metadata.jsonl for the `json` reader."""
