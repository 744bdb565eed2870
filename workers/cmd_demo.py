"""`herald demo`: see `workers.cmd_dev` (dev and demo share their set-up)."""

from workers.cmd_dev import run_demo as run

__all__ = ["run"]
