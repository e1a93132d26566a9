"""Fusion of several retrievers' candidate lists into one pool (one method a module)."""
