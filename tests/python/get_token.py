"""Gets one token with the real Python azure-identity SDK (or MSAL) and prints it as JSON.

Run by tests/tests/agent_sdk.rs, entra_compat.rs and clients_python.rs with a controlled
environment:

    get_token.py MODE SCOPE [client_id=ID|object_id=ID|resource_id=ID]

- managed-appservice: ManagedIdentityCredential; the test sets IDENTITY_ENDPOINT and
  IDENTITY_HEADER (the App Service protocol).
- managed-imds: ManagedIdentityCredential; the test sets only
  AZURE_POD_IDENTITY_AUTHORITY_HOST (the IMDS protocol, no availability probe).
- default: DefaultAzureCredential with the developer credentials excluded, so the chain
  reaches ManagedIdentityCredential without running az, pwsh or azd.
- workload: WorkloadIdentityCredential against the broker's Entra-compatible endpoint;
  the test sets azure-workload-identity's AZURE_TENANT_ID, AZURE_CLIENT_ID,
  AZURE_FEDERATED_TOKEN_FILE and AZURE_AUTHORITY_HOST (the broker's https URL), passed
  as arguments; workload-env: the same credential reading them itself.
- msal: plain MSAL ConfidentialClientApplication with the token file's content as the
  client assertion, same variables.
- managed: ManagedIdentityCredential, whatever protocol the environment names (also
  MSI_ENDPOINT + MSI_SECRET, App Service 2017-09-01).
- msal-managed: MSAL's own ManagedIdentityClient (system-assigned, or user-assigned by the
  optional id), whatever protocol the environment names.
- default-chain: DefaultAzureCredential with the optional id as its managed identity and
  the Azure CLI as the only developer credential after it, so a managed identity the
  endpoint cannot serve moves the chain on to `az`.

The optional third argument names a user-assigned identity.

Prints {"token": ..., "expires_on": ...} on success; on failure the SDK's error goes to
stderr and the exit status is 1.
"""

import json
import sys

import os
import time

from azure.identity import (
    DefaultAzureCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)


def identity(arg):
    """The optional `kind=value` argument as keyword arguments."""
    if arg is None:
        return {}
    kind, _, value = arg.partition("=")
    if kind not in ("client_id", "object_id", "resource_id"):
        raise SystemExit(f"unknown identity kind {kind!r}")
    return {kind: value}


def credential(mode, ids):
    if mode in ("managed-appservice", "managed-imds", "managed"):
        if "client_id" in ids:
            return ManagedIdentityCredential(client_id=ids["client_id"])
        return ManagedIdentityCredential(identity_config=ids or None)
    if mode == "default-chain":
        return DefaultAzureCredential(
            managed_identity_client_id=ids.get("client_id"),
            exclude_powershell_credential=True,
            exclude_developer_cli_credential=True,
            exclude_visual_studio_code_credential=True,
            exclude_shared_token_cache_credential=True,
            exclude_interactive_browser_credential=True,
            # `az` may start slowly on a busy machine; the default is 10 s.
            process_timeout=120,
        )
    if mode == "default":
        return DefaultAzureCredential(
            exclude_cli_credential=True,
            exclude_powershell_credential=True,
            exclude_developer_cli_credential=True,
            exclude_visual_studio_code_credential=True,
            exclude_shared_token_cache_credential=True,
            exclude_interactive_browser_credential=True,
        )
    if mode == "workload":
        return WorkloadIdentityCredential(
            tenant_id=os.environ["AZURE_TENANT_ID"],
            client_id=os.environ["AZURE_CLIENT_ID"],
            token_file_path=os.environ["AZURE_FEDERATED_TOKEN_FILE"],
            authority=os.environ["AZURE_AUTHORITY_HOST"],
            disable_instance_discovery=True,
        )
    if mode == "workload-env":
        # Everything from the environment, as azure-workload-identity sets it.
        return WorkloadIdentityCredential(disable_instance_discovery=True)
    raise SystemExit(f"unknown mode {mode!r}")


def msal_token(scope):
    import msal

    with open(os.environ["AZURE_FEDERATED_TOKEN_FILE"]) as f:
        assertion = f.read().strip()
    app = msal.ConfidentialClientApplication(
        os.environ["AZURE_CLIENT_ID"],
        client_credential={"client_assertion": assertion},
        authority=f"{os.environ['AZURE_AUTHORITY_HOST'].rstrip('/')}/{os.environ['AZURE_TENANT_ID']}",
        instance_discovery=False,
    )
    result = app.acquire_token_for_client([scope])
    if "access_token" not in result:
        raise RuntimeError(json.dumps(result))
    return result["access_token"], int(time.time()) + int(result["expires_in"])


def msal_managed_token(scope, ids):
    import msal
    import requests

    if ids:
        managed_identity = msal.UserAssignedManagedIdentity(**ids)
    else:
        managed_identity = msal.SystemAssignedManagedIdentity()
    client = msal.ManagedIdentityClient(managed_identity, http_client=requests.Session())
    resource = scope.removesuffix("/.default")
    result = client.acquire_token_for_client(resource=resource)
    if "access_token" not in result:
        raise RuntimeError(json.dumps(result))
    return result["access_token"], int(time.time()) + int(result["expires_in"])


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit("usage: get_token.py MODE SCOPE [client_id=ID|object_id=ID|resource_id=ID]")
    mode, scope = sys.argv[1], sys.argv[2]
    ids = identity(sys.argv[3] if len(sys.argv) == 4 else None)
    if mode in ("msal", "msal-managed"):
        token, expires_on = msal_token(scope) if mode == "msal" else msal_managed_token(scope, ids)
        print(json.dumps({"token": token, "expires_on": expires_on}))
        return
    token = credential(mode, ids).get_token(scope)
    print(json.dumps({"token": token.token, "expires_on": token.expires_on}))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the test shows this text when it fails
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
