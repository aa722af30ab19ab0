"""The ML steps as plain, typed, testable Python: no Prefect, no serving imports."""
