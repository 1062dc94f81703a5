"""Realistic Terraform state documents for the benchmarks (deterministic, orjson-serialised).

Shapes follow Terraform's state format v4: a header, `outputs`, and `resources`, each
with `instances[].attributes`; values look like AWS resources (ids, ARNs, tags, CIDRs,
JSON policies) so that compression ratios are representative rather than flattering.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

import orjson

AWS = 'provider["registry.terraform.io/hashicorp/aws"]'
PRIVATE = "eyJlMmJmYjczMC1lY2FhLTExZTYtOGY4OC0zNDM2M2JjN2M0YzAiOnsiY3JlYXRlIjo2MDAwMDAwMDAwMDB9fQ=="


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _tags(i: int, rev: int) -> dict[str, str]:
    return {
        "Name": f"svc-{i:05d}",
        "Environment": "production",
        "Team": ("platform", "payments", "search", "identity")[i % 4],
        "ManagedBy": "terraform",
        "CostCenter": f"cc-{1000 + i % 37}",
        "Revision": str(rev),
    }


def _instance(i: int, rng: random.Random, rev: int) -> tuple[str, dict[str, Any]]:
    ip = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
    iid = f"i-{_hex(rng, 17)}"
    return "aws_instance", {
        "ami": f"ami-{_hex(rng, 17)}",
        "arn": f"arn:aws:ec2:eu-west-1:123456789012:instance/{iid}",
        "associate_public_ip_address": False,
        "availability_zone": f"eu-west-1{'abc'[i % 3]}",
        "cpu_core_count": 2,
        "cpu_threads_per_core": 2,
        "credit_specification": [],
        "disable_api_stop": False,
        "disable_api_termination": False,
        "ebs_block_device": [],
        "ebs_optimized": True,
        "enclave_options": [{"enabled": False}],
        "ephemeral_block_device": [],
        "get_password_data": False,
        "hibernation": False,
        "host_id": "",
        "iam_instance_profile": f"svc-{i:05d}-profile",
        "id": iid,
        "instance_initiated_shutdown_behavior": "stop",
        "instance_state": "running",
        "instance_type": ("t3.medium", "m6i.large", "c6i.xlarge")[i % 3],
        "ipv6_address_count": 0,
        "ipv6_addresses": [],
        "key_name": "deploy",
        "launch_template": [],
        "maintenance_options": [{"auto_recovery": "default"}],
        "metadata_options": [
            {
                "http_endpoint": "enabled",
                "http_put_response_hop_limit": 2,
                "http_tokens": "required",
                "instance_metadata_tags": "disabled",
            }
        ],
        "monitoring": True,
        "network_interface": [],
        "outpost_arn": "",
        "password_data": "",
        "placement_group": "",
        "primary_network_interface_id": f"eni-{_hex(rng, 17)}",
        "private_dns": f"ip-{ip.replace('.', '-')}.eu-west-1.compute.internal",
        "private_ip": ip,
        "public_dns": "",
        "public_ip": "",
        "root_block_device": [
            {
                "delete_on_termination": True,
                "device_name": "/dev/xvda",
                "encrypted": True,
                "iops": 3000,
                "kms_key_id": "arn:aws:kms:eu-west-1:123456789012:key/"
                + str(uuid.UUID(int=rng.getrandbits(128))),
                "tags": {},
                "throughput": 125,
                "volume_id": f"vol-{_hex(rng, 17)}",
                "volume_size": 50,
                "volume_type": "gp3",
            }
        ],
        "secondary_private_ips": [],
        "security_groups": [],
        "source_dest_check": True,
        "subnet_id": f"subnet-{_hex(rng, 17)}",
        "tags": _tags(i, rev),
        "tags_all": _tags(i, rev),
        "tenancy": "default",
        "user_data": _hex(rng, 40),
        "user_data_replace_on_change": False,
        "volume_tags": None,
        "vpc_security_group_ids": [f"sg-{_hex(rng, 17)}"],
    }


def _security_group(i: int, rng: random.Random, rev: int) -> tuple[str, dict[str, Any]]:
    sid = f"sg-{_hex(rng, 17)}"

    def rule(port: int, cidr: str) -> dict[str, Any]:
        return {
            "cidr_blocks": [cidr],
            "description": f"allow {port}",
            "from_port": port,
            "ipv6_cidr_blocks": [],
            "prefix_list_ids": [],
            "protocol": "tcp",
            "security_groups": [],
            "self": False,
            "to_port": port,
        }

    return "aws_security_group", {
        "arn": f"arn:aws:ec2:eu-west-1:123456789012:security-group/{sid}",
        "description": f"Security group for svc-{i:05d}",
        "egress": [rule(0, "0.0.0.0/0")],
        "id": sid,
        "ingress": [rule(p, f"10.{i % 256}.0.0/16") for p in (22, 443, 8080 + rev % 10)],
        "name": f"svc-{i:05d}-sg",
        "name_prefix": "",
        "owner_id": "123456789012",
        "revoke_rules_on_delete": False,
        "tags": _tags(i, rev),
        "tags_all": _tags(i, rev),
        "timeouts": None,
        "vpc_id": f"vpc-{_hex(rng, 17)}",
    }


def _iam_role(i: int, rng: random.Random, rev: int) -> tuple[str, dict[str, Any]]:
    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Action": "sts:AssumeRole",
                    "Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"},
                    "Sid": f"Svc{i}",
                }
            ],
        },
        separators=(",", ":"),
    )
    return "aws_iam_role", {
        "arn": f"arn:aws:iam::123456789012:role/svc-{i:05d}",
        "assume_role_policy": policy,
        "create_date": f"2024-0{1 + i % 9}-1{i % 10}T08:{i % 60:02d}:00Z",
        "description": "",
        "force_detach_policies": False,
        "id": f"svc-{i:05d}",
        "inline_policy": [],
        "managed_policy_arns": [
            "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
            f"arn:aws:iam::123456789012:policy/svc-{i:05d}-{rev}",
        ],
        "max_session_duration": 3600,
        "name": f"svc-{i:05d}",
        "name_prefix": "",
        "path": "/",
        "permissions_boundary": "",
        "tags": _tags(i, rev),
        "tags_all": _tags(i, rev),
        "unique_id": "AROA" + _hex(rng, 17).upper(),
    }


KINDS = (_instance, _security_group, _iam_role)


def make_resource(i: int, rev: int = 0) -> dict[str, Any]:
    """Resource number i at revision rev (same i, different rev: one resource changed)."""
    rng = random.Random(i * 1_000_003 + rev)
    rtype, attrs = KINDS[i % len(KINDS)](i, rng, rev)
    deps = [f"aws_security_group.svc_{i - 1:05d}"] if i % 3 == 0 and i > 0 else []
    return {
        "mode": "managed",
        "type": rtype,
        "name": f"svc_{i:05d}",
        "provider": AWS,
        "instances": [
            {
                "schema_version": 1,
                "attributes": attrs,
                "sensitive_attributes": [],
                "private": PRIVATE,
                "dependencies": deps,
            }
        ],
    }


def make_state(resources: list[dict[str, Any]], serial: int, lineage: str) -> bytes:
    doc = {
        "version": 4,
        "terraform_version": "1.9.5",
        "serial": serial,
        "lineage": lineage,
        "outputs": {
            "resource_count": {"value": len(resources), "type": "number"},
        },
        "resources": resources,
        "check_results": None,
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def resources_for_size(target_bytes: int) -> list[dict[str, Any]]:
    """A resource list whose state serialises to roughly target_bytes."""
    sample = make_state([make_resource(i) for i in range(30)], 1, "x")
    count = max(1, round(target_bytes / (len(sample) / 30)))
    return [make_resource(i) for i in range(count)]


def serial_template(state_with_serial_0: bytes) -> tuple[bytes, bytes]:
    """Split a serialised state around its serial so new serials can be spliced in cheaply."""
    marker = b'"serial": 0,'
    at = state_with_serial_0.index(marker)
    head = state_with_serial_0[: at + len(b'"serial": ')]
    return head, state_with_serial_0[at + len(marker) - 1 :]


def new_lineage() -> str:
    return str(uuid.uuid4())
