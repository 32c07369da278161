"""Data stages: fetch, prepare, episodes."""
