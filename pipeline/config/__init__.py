"""Stage 0, configuration: the schema (schema.py), loading from conf/ (load.py), value checks (validate.py)."""
