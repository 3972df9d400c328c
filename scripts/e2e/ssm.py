"""SecureString parameters for the end-to-end run, in the SSM emulator (moto).

    python ssm.py put PREFIX NAME...     # value of each NAME from the environment
    python ssm.py delete PREFIX NAME...  # missing ones are ignored

The endpoint comes from AWS_ENDPOINT_URL_SSM (boto3 honours it, like the
Rust SDK); region and dummy credentials from the usual AWS_* variables.
Values are never printed.
"""

import os
import sys

import boto3
from botocore.config import Config


def client():
    if not os.environ.get("AWS_ENDPOINT_URL_SSM"):
        sys.exit("ssm.py: AWS_ENDPOINT_URL_SSM is not set (refusing to talk to real AWS)")
    return boto3.client(
        "ssm",
        endpoint_url=os.environ["AWS_ENDPOINT_URL_SSM"],
        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}),
    )


def main(argv):
    if len(argv) < 3 or argv[0] not in ("put", "delete"):
        sys.exit(__doc__)
    action, prefix, names = argv[0], argv[1].rstrip("/"), argv[2:]
    ssm = client()
    if action == "put":
        for name in names:
            value = os.environ.get(name)
            if not value:
                sys.exit(f"ssm.py: {name} is not set in the environment")
            ssm.put_parameter(Name=f"{prefix}/{name}", Value=value, Type="SecureString", Overwrite=True)
        # Read them back decrypted, as the functions will.
        got = ssm.get_parameters(Names=[f"{prefix}/{n}" for n in names], WithDecryption=True)
        if got["InvalidParameters"] or len(got["Parameters"]) != len(names):
            sys.exit(f"ssm.py: read-back failed: missing {got['InvalidParameters']}")
        for p in got["Parameters"]:
            if p["Type"] != "SecureString" or p["Value"] != os.environ[p["Name"].rsplit("/", 1)[1]]:
                sys.exit(f"ssm.py: read-back of {p['Name']} does not match")
        print(f"ssm.py: put {len(names)} SecureString parameter(s) under {prefix}")
    else:
        resp = ssm.delete_parameters(Names=[f"{prefix}/{n}" for n in names])
        print(f"ssm.py: deleted {len(resp['DeletedParameters'])} parameter(s) under {prefix}")


if __name__ == "__main__":
    main(sys.argv[1:])
