"""Tierflow's event contracts: the CloudEvents envelope and one frozen model per event type."""
