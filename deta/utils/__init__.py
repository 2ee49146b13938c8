"""Utilities of deta (environment report)."""
