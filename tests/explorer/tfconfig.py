"""Terraform configurations whose states the explorer tests read: modules, count (number
keys), for_each (string keys), a sensitive variable and output, a `moved` block and a
create_before_destroy replacement that fails (a tainted object plus a deposed one).

Only the built-in `terraform_data` resource is used, so no provider is downloaded.
"""

from __future__ import annotations

from pathlib import Path

SECRET = "s3cr3t-explorer-value"

CHILD_MODULE = """
variable "label" {
  type = string
}

resource "terraform_data" "inner" {
  for_each = { "k 1" = var.label }
  input    = each.value
}

output "inner_id" {
  value = terraform_data.inner["k 1"].id
}
"""

_COMMON = """
variable "secret" {
  type      = string
  sensitive = true
  default   = "SECRET_VALUE"
}

variable "fail" {
  type    = bool
  default = false
}

variable "trigger" {
  type    = string
  default = "1"
}

resource "terraform_data" "secret_holder" {
  input            = "visible"
  triggers_replace = var.secret
}

module "child" {
  source = "./child"
  count  = 1
  label  = "m${count.index}"
}

resource "terraform_data" "cbd" {
  input            = "cbd"
  triggers_replace = var.trigger

  provisioner "local-exec" {
    command = var.fail ? "exit 1" : "true"
  }

  lifecycle {
    create_before_destroy = true
  }
}

output "secret" {
  value     = var.secret
  sensitive = true
}
""".replace("SECRET_VALUE", SECRET)

#: The first version: two counted instances, two for_each ones, one to be moved.
CONFIG_V1 = (
    _COMMON
    + """
resource "terraform_data" "counted" {
  count = 2
  input = "c${count.index}"
}

resource "terraform_data" "each" {
  for_each = toset(["alpha", "beta"])
  input    = each.key
}

resource "terraform_data" "old_name" {
  input = "moving"
}

output "plain" {
  value = terraform_data.counted[0].output
}
"""
)

#: The second: counted[0] changed, counted[1] removed, each["gamma"] added, old_name moved.
CONFIG_V2 = (
    _COMMON
    + """
resource "terraform_data" "counted" {
  count = 1
  input = "c${count.index}-changed"
}

resource "terraform_data" "each" {
  for_each = toset(["alpha", "beta", "gamma"])
  input    = each.key
}

moved {
  from = terraform_data.old_name
  to   = terraform_data.new_name
}

resource "terraform_data" "new_name" {
  input = "moving"
}

output "plain" {
  value = terraform_data.counted[0].output
}
"""
)

V1_ADDRESSES = {
    "terraform_data.secret_holder",
    'module.child[0].terraform_data.inner["k 1"]',
    "terraform_data.cbd",
    "terraform_data.counted[0]",
    "terraform_data.counted[1]",
    'terraform_data.each["alpha"]',
    'terraform_data.each["beta"]',
    "terraform_data.old_name",
}


def write_config(workdir: Path, config: str, backend: str = "") -> None:
    """main.tf (with an optional backend block) and the child module."""
    (workdir / "child").mkdir(parents=True, exist_ok=True)
    (workdir / "child" / "main.tf").write_text(CHILD_MODULE)
    (workdir / "main.tf").write_text(backend + config)
