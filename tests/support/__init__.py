"""Stand-ins and helpers shared by tests (not shipped)."""
