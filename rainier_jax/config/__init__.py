"""Reading settings: TOML tables into validated frozen dataclasses, and the checks every value goes through."""
