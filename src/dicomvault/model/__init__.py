"""Plain values shared by every layer: records, errors, UIDs. Imports nothing of ours."""
