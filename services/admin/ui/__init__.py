"""The live dashboard at /ui (server-rendered, updated over server-sent events); see router.py."""

from services.admin.ui.router import install_ui

__all__ = ["install_ui"]
