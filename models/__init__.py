"""Learned parts of the gateway (translator, packet optimizer, anomaly scorer). Empty for now."""
