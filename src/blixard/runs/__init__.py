"""Server-side plans and applies: runs of OpenTofu/Terraform against this server's state."""
