"""`python -m events.schemas`: regenerate the JSON Schema files from the event models."""

from events.schemas import SCHEMA_DIR, write_schemas

if __name__ == "__main__":
    written = write_schemas()
    print(f"wrote {len(written)} schemas to {SCHEMA_DIR}")
