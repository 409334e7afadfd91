"""Configuration keys changed by the Central System (only those; defaults live in code)."""

from __future__ import annotations

from evsed.controller.store.database import Repository


class ConfigRepository(Repository):
    def config_values(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM config").fetchall())

    def set_config(self, key: str, value: str) -> None:
        """Durable: ChangeConfiguration is answered only after this returns."""
        with self._db.durable():
            self._db.execute(
                "INSERT INTO config (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value "
                "WHERE value IS NOT excluded.value",
                (key, value),
            )

    def delete_config(self, key: str) -> None:
        with self._db.durable():
            self._db.execute("DELETE FROM config WHERE key = ?", (key,))
