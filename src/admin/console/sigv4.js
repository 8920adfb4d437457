// SigV4 (AWS4-HMAC-SHA256) in the browser with WebCrypto, for the admin
// API: service "apigateway", the signed headers host and x-amz-date, the
// canonical URI and query as botocore builds them for non-S3 services.
"use strict";

const SigV4 = (() => {
  const enc = new TextEncoder();

  // RFC 3986 percent-encoding: everything but A-Z a-z 0-9 - _ . ~
  function encode(text) {
    return encodeURIComponent(text).replace(
      /[!'()*]/g,
      (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase()
    );
  }

  function hex(buffer) {
    return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function sha256(data) {
    return hex(await crypto.subtle.digest("SHA-256", typeof data === "string" ? enc.encode(data) : data));
  }

  async function hmac(key, data) {
    const k = await crypto.subtle.importKey(
      "raw",
      typeof key === "string" ? enc.encode(key) : key,
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign"]
    );
    return crypto.subtle.sign("HMAC", k, enc.encode(data));
  }

  // "20261203T235959Z"
  function amzDate(now) {
    return now.toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");
  }

  // Builds the path and query to send from raw segments and pairs, and
  // the headers that sign them. `segments`: ["usageplans", id, "keys"];
  // `query`: [[name, value], ...]; `body`: a string ("" for none).
  async function sign({ method, segments, query = [], body = "", credentials, host, now = new Date() }) {
    const path = "/" + segments.map(encode).join("/");
    const pairs = query.map(([k, v]) => [encode(k), encode(String(v))]);
    pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
    const canonicalQuery = pairs.map(([k, v]) => k + "=" + v).join("&");
    const date = amzDate(now);
    const day = date.slice(0, 8);
    const scope = `${day}/${credentials.region}/apigateway/aws4_request`;
    const payloadHash = await sha256(body);
    const canonicalRequest = [
      method,
      // The path as sent, percent-encoded once more (non-S3 services).
      path.replace(/%/g, "%25"),
      canonicalQuery,
      `host:${host}\nx-amz-date:${date}\n`,
      "host;x-amz-date",
      payloadHash,
    ].join("\n");
    const toSign = ["AWS4-HMAC-SHA256", date, scope, await sha256(canonicalRequest)].join("\n");
    let key = await hmac("AWS4" + credentials.secretAccessKey, day);
    key = await hmac(key, credentials.region);
    key = await hmac(key, "apigateway");
    key = await hmac(key, "aws4_request");
    const signature = hex(await hmac(key, toSign));
    return {
      url: path + (canonicalQuery ? "?" + canonicalQuery : ""),
      headers: {
        "X-Amz-Date": date,
        Authorization:
          `AWS4-HMAC-SHA256 Credential=${credentials.accessKeyId}/${scope}, ` +
          `SignedHeaders=host;x-amz-date, Signature=${signature}`,
      },
    };
  }

  return { sign, encode };
})();
