"""Blixard: a remote state server for OpenTofu and Terraform."""

__version__ = "0.1.0"
