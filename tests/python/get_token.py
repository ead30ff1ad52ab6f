"""Gets one token with the real Python azure-identity SDK and prints it as JSON.

Run by tests/tests/agent_sdk.rs with a controlled environment:

    get_token.py managed-appservice|managed-imds|default SCOPE

- managed-appservice: ManagedIdentityCredential; the test sets IDENTITY_ENDPOINT and
  IDENTITY_HEADER (the App Service protocol).
- managed-imds: ManagedIdentityCredential; the test sets only
  AZURE_POD_IDENTITY_AUTHORITY_HOST (the IMDS protocol, no availability probe).
- default: DefaultAzureCredential with the developer credentials excluded, so the chain
  reaches ManagedIdentityCredential without running az, pwsh or azd.

Prints {"token": ..., "expires_on": ...} on success; on failure the SDK's error goes to
stderr and the exit status is 1.
"""

import json
import sys

from azure.identity import DefaultAzureCredential, ManagedIdentityCredential


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
    raise SystemExit(f"unknown mode {mode!r}")


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: get_token.py managed-appservice|managed-imds|default SCOPE")
    mode, scope = sys.argv[1], sys.argv[2]
    token = credential(mode).get_token(scope)
    print(json.dumps({"token": token.token, "expires_on": token.expires_on}))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the test shows this text when it fails
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
