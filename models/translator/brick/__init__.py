"""Brick 1.4.4 point classes (BSD-3, see LICENSE here): the translator's label space."""
