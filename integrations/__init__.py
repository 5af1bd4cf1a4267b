"""Tracker integrations, shipped as `tracked_ckpt.integrations`; the only modules that import a tracker SDK."""
