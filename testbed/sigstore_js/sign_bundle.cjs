// Make a key-based Sigstore bundle (v0.3, DSSE) with sigstore-js, offline: no Fulcio, no
// Rekor (witnesses: []), the signature made with a local key by node's crypto.
//
// usage: node sign_bundle.cjs <private-key.pem> <payload-file> <payload-type> [hint]
// prints the bundle JSON on stdout.
"use strict";
const crypto = require("node:crypto");
const fs = require("node:fs");
const { DSSEBundleBuilder } = require("@sigstore/sign");
const { bundleToJSON } = require("@sigstore/bundle");

async function main() {
  const [keyPath, payloadPath, payloadType, hint] = process.argv.slice(2);
  const privateKey = crypto.createPrivateKey(fs.readFileSync(keyPath));
  const publicKey = crypto.createPublicKey(privateKey).export({ type: "spki", format: "pem" });
  const signer = {
    async sign(data) {
      // ECDSA P-256 with SHA-256, DER: cosign's default key-based signature.
      const signature = crypto.sign("sha256", data, privateKey);
      return { signature, key: { $case: "publicKey", publicKey, hint: hint || "" } };
    },
  };
  const builder = new DSSEBundleBuilder({ signer, witnesses: [] });
  const bundle = await builder.create({ data: fs.readFileSync(payloadPath), type: payloadType });
  process.stdout.write(JSON.stringify(bundleToJSON(bundle)));
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
