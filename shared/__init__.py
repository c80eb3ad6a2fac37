"""Tierflow's domain, persistence, storage and runtime plumbing, shared by every function."""
