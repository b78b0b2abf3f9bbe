"""Session-wide real clusters on 127.0.0.1, started once and always stopped (see conftest)."""
