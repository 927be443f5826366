"""Optimization stage: turns a trained bundle into faster variants (stands on models/)."""
