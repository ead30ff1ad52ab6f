"""Gets one token with the real Python azure-identity SDK and prints it as JSON.

Run by tests/tests/agent_sdk.rs with a controlled environment:

    get_token.py managed-appservice|managed-imds|default|workload|workload-env|msal SCOPE

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


def credential(mode):
    if mode in ("managed-appservice", "managed-imds"):
        return ManagedIdentityCredential()
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


def main():
    if len(sys.argv) != 3:
        raise SystemExit(
            "usage: get_token.py managed-appservice|managed-imds|default|workload|workload-env|msal SCOPE"
        )
    mode, scope = sys.argv[1], sys.argv[2]
    if mode == "msal":
        token, expires_on = msal_token(scope)
        print(json.dumps({"token": token, "expires_on": expires_on}))
        return
    token = credential(mode).get_token(scope)
    print(json.dumps({"token": token.token, "expires_on": token.expires_on}))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the test shows this text when it fails
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
