// Gets one token with a real JavaScript Azure client and prints it as JSON.
//
// Run by tests/tests/clients_js.rs with a controlled environment:
//
//     node get_token.mjs MODE SCOPE [client_id=ID | object_id=ID | resource_id=ID]
//
// - identity-managed: @azure/identity ManagedIdentityCredential; the environment chooses
//   the protocol (IDENTITY_ENDPOINT + IDENTITY_HEADER: App Service; MSI_ENDPOINT +
//   MSI_SECRET: App Service 2017-09-01; AZURE_POD_IDENTITY_AUTHORITY_HOST: IMDS).
// - identity-default: DefaultAzureCredential (the optional id becomes
//   managedIdentityClientId or managedIdentityResourceId).
// - identity-workload: WorkloadIdentityCredential from azure-workload-identity's variables
//   (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST).
// - msal-managed: @azure/msal-node ManagedIdentityApplication.
// - msal-confidential: @azure/msal-node ConfidentialClientApplication with the token
//   file's content as client assertion, same variables as identity-workload.
//
// Prints {"token": ..., "expires_on": <epoch seconds>} on success; on failure the client's
// error goes to stderr and the exit status is 1.

import { readFileSync } from "node:fs";
import {
  DefaultAzureCredential,
  ManagedIdentityCredential,
  WorkloadIdentityCredential,
} from "@azure/identity";
import { ConfidentialClientApplication, ManagedIdentityApplication } from "@azure/msal-node";

const [mode, scope, id] = process.argv.slice(2);
if (!mode || !scope) {
  console.error("usage: get_token.mjs MODE SCOPE [client_id=ID | object_id=ID | resource_id=ID]");
  process.exit(2);
}
const [idKind, idValue] = id ? id.split("=", 2) : [undefined, undefined];
const resource = scope.replace(/\/\.default$/, "");

function identityOptions() {
  switch (idKind) {
    case undefined:
      return {};
    case "client_id":
      return { clientId: idValue };
    case "object_id":
      return { objectId: idValue };
    case "resource_id":
      return { resourceId: idValue };
    default:
      throw new Error(`unknown identity kind ${idKind}`);
  }
}

async function identityToken(credential) {
  const token = await credential.getToken(scope);
  return { token: token.token, expires_on: Math.floor(token.expiresOnTimestamp / 1000) };
}

async function run() {
  switch (mode) {
    case "identity-managed":
      return identityToken(new ManagedIdentityCredential(identityOptions()));
    case "identity-default": {
      const options = identityOptions();
      return identityToken(
        new DefaultAzureCredential({
          managedIdentityClientId: options.clientId,
          managedIdentityResourceId: options.resourceId,
          // `az` (the next credential after managed identity) may start slowly on a busy
          // machine; the default is 10 s.
          processTimeoutInMs: 120_000,
        }),
      );
    }
    case "identity-workload":
      return identityToken(
        new WorkloadIdentityCredential({
          authorityHost: process.env.AZURE_AUTHORITY_HOST,
          disableInstanceDiscovery: true,
        }),
      );
    case "msal-managed": {
      const ids = identityOptions();
      const app = new ManagedIdentityApplication({
        managedIdentityIdParams: {
          userAssignedClientId: ids.clientId,
          userAssignedObjectId: ids.objectId,
          userAssignedResourceId: ids.resourceId,
        },
      });
      const result = await app.acquireToken({ resource });
      return {
        token: result.accessToken,
        expires_on: Math.floor(result.expiresOn.getTime() / 1000),
      };
    }
    case "msal-confidential": {
      const authorityHost = new URL(process.env.AZURE_AUTHORITY_HOST);
      const app = new ConfidentialClientApplication({
        auth: {
          clientId: process.env.AZURE_CLIENT_ID,
          authority: `${authorityHost.origin}/${process.env.AZURE_TENANT_ID}`,
          clientAssertion: readFileSync(process.env.AZURE_FEDERATED_TOKEN_FILE, "utf8").trim(),
          // A host MSAL does not know: trust it as given, no instance discovery.
          knownAuthorities: [authorityHost.host],
        },
      });
      const result = await app.acquireTokenByClientCredential({ scopes: [scope] });
      return {
        token: result.accessToken,
        expires_on: Math.floor(result.expiresOn.getTime() / 1000),
      };
    }
    default:
      throw new Error(`unknown mode ${mode}`);
  }
}

try {
  console.log(JSON.stringify(await run()));
} catch (e) {
  console.error(`${e.name}: ${e.message}`);
  process.exit(1);
}
