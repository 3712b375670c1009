#!/usr/bin/env node
/*
 * An independent stand-in for eFormidling's RSocket status service (the Spring Boot
 * `efm-kafka-status-proxy`), written with rsocket-js, for testing relay's RSocket client.
 *
 *   node tests/node/status-server.js --port 0 --jwks-url http://127.0.0.1:PORT/jwk \
 *        --out events.jsonl [--scope eformidling:dpo] [--host 127.0.0.1] [--route log-fire]
 *        [--clock-skew 60] [--no-server-keepalive] [--append] [--accept-arrays]
 *
 * Prints exactly one line to stdout, `LISTENING <port>`, once it accepts connections; everything
 * else (diagnostics) goes to stderr. --out is a JSON-lines file: one `{"setup": {...}}` line per
 * SETUP frame received (accepted or rejected), one `{"event": ...}` line per accepted event and
 * one `{"dropped": reason}` line per request (or array element) acknowledged but unusable.
 *
 * Like the real service it acknowledges every authenticated request to its route before looking
 * at the data, then drops what it cannot use (an array unless --accept-arrays, bad JSON, no
 * `logger_name`, a `logger_name` other than STATUS); its errors carry Spring Security's texts.
 * See README.md beside this file.
 */
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const net = require("node:net");
const { parseArgs } = require("node:util");

const {
  RSocketServer,
  RSocketError,
  ErrorCodes,
  deserializeFrames,
  FrameTypes,
} = require("rsocket-core");
const { TcpServerTransport } = require("rsocket-tcp-server");
const {
  decodeCompositeMetadata,
  decodeAuthMetadata,
  decodeRoutes,
  WellKnownMimeTypeEntry,
  ExplicitMimeTimeEntry,
  WellKnownAuthType,
} = require("rsocket-composite-metadata");

const COMPOSITE_MIME = "message/x.rsocket.composite-metadata.v0";
const JSON_MIME = "application/json";
const ROUTING_MIME = "message/x.rsocket.routing.v0";
const AUTH_MIME = "message/x.rsocket.authentication.v0";
const LEGACY_BEARER_MIME = "message/x.rsocket.authentication.bearer.v0";

// ---------------------------------------------------------------------------------------------
// Command line

function usage(message) {
  process.stderr.write(
    `${message ? `status-server: ${message}\n` : ""}` +
      "usage: node status-server.js --port N --jwks-url URL --out FILE [--scope SCOPE]\n" +
      "       [--host 127.0.0.1] [--route log-fire] [--clock-skew SECONDS]\n" +
      "       [--no-server-keepalive] [--append] [--accept-arrays]\n",
  );
  process.exit(2);
}

let args;
try {
  args = parseArgs({
    options: {
      port: { type: "string", default: "0" },
      host: { type: "string", default: "127.0.0.1" },
      "jwks-url": { type: "string" },
      out: { type: "string" },
      scope: { type: "string" },
      route: { type: "string", default: "log-fire" },
      "clock-skew": { type: "string", default: "60" },
      "accept-arrays": { type: "boolean", default: false },
      "no-server-keepalive": { type: "boolean", default: false },
      append: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    strict: true,
    allowPositionals: false,
  }).values;
} catch (e) {
  usage(e.message);
}
if (args.help) usage();
if (!args["jwks-url"]) usage("--jwks-url is required");
if (!args.out) usage("--out is required");
const PORT = Number(args.port);
if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) usage(`bad --port ${args.port}`);
const CLOCK_SKEW = Number(args["clock-skew"]);
if (!Number.isFinite(CLOCK_SKEW) || CLOCK_SKEW < 0) usage(`bad --clock-skew ${args["clock-skew"]}`);
const OUT = args.out;
const ROUTE = args.route;
const SCOPE = args.scope;
const ACCEPT_ARRAYS = args["accept-arrays"];

function log(...parts) {
  process.stderr.write(`[status-server ${new Date().toISOString()}] ${parts.join(" ")}\n`);
}

// Never die on a bug in rsocket-js or here: a test peer that crashes hides the client's behaviour.
process.on("uncaughtException", (e) => log("uncaught exception:", (e && e.stack) || e));
process.on("unhandledRejection", (e) => log("unhandled rejection:", (e && e.stack) || e));

// Synchronous appends: a line is on disk before the acknowledgement is sent.
function appendLines(lines) {
  if (lines.length) fs.appendFileSync(OUT, lines.map((l) => `${JSON.stringify(l)}\n`).join(""));
}
if (!args.append) fs.writeFileSync(OUT, "");

// ---------------------------------------------------------------------------------------------
// Errors. rsocket-js 1.0.0-alpha.3 is compiled to ES5, where `class RSocketError extends Error`
// returns the plain Error made by `Error.call(this)`: `new RSocketError(..)` is not an
// `instanceof RSocketError`, and the responder then sends every error as APPLICATION_ERROR.
// Restoring the prototype makes the code we choose go out on the wire.

function rsocketError(code, message) {
  const e = new RSocketError(code, message);
  Object.setPrototypeOf(e, RSocketError.prototype);
  e.code = code;
  return e;
}
const appError = (message) => rsocketError(ErrorCodes.APPLICATION_ERROR, message);

// Spring Security 5.5's texts (the exception's message is what the service sends).
const accessDenied = () => appError("Access Denied");
const notValidated = () => appError("Failed to validate the token");
const decodeError = (why) => appError(`An error occurred while attempting to decode the Jwt: ${why}`);
// java.time.Instant.toString() of a whole-second instant
const instant = (seconds) => new Date(Math.floor(seconds) * 1000).toISOString().replace(".000Z", "Z");

// ---------------------------------------------------------------------------------------------
// JWKS and JWT (RS256) with node:crypto only

class Jwks {
  constructor(url) {
    this.url = url;
    this.byKid = new Map();
    this.all = [];
    this.loaded = false;
    this.inflight = null;
  }

  refresh() {
    // Concurrent requests with an unknown kid share one fetch.
    if (!this.inflight) {
      this.inflight = this.load().finally(() => {
        this.inflight = null;
      });
    }
    return this.inflight;
  }

  async load() {
    const res = await fetch(this.url, { signal: AbortSignal.timeout(5000) });
    if (!res.ok) throw new Error(`JWKS ${this.url} answered HTTP ${res.status}`);
    const body = await res.json();
    const byKid = new Map();
    const all = [];
    for (const jwk of (body && body.keys) || []) {
      if (!jwk || jwk.kty !== "RSA" || (jwk.use && jwk.use !== "sig")) continue;
      try {
        const key = crypto.createPublicKey({
          key: { kty: "RSA", n: jwk.n, e: jwk.e },
          format: "jwk",
        });
        all.push(key);
        if (jwk.kid !== undefined) byKid.set(String(jwk.kid), key);
      } catch (e) {
        log(`JWKS: skipping key ${jwk.kid}: ${e.message}`);
      }
    }
    this.byKid = byKid;
    this.all = all;
    this.loaded = true;
    log(`JWKS: loaded ${all.length} key(s) from ${this.url}`);
  }

  async keysFor(kid) {
    if (!this.loaded) await this.refresh();
    if (kid === undefined || kid === null) return this.all;
    if (!this.byKid.has(String(kid))) await this.refresh(); // key rotation: refetch once
    const key = this.byKid.get(String(kid));
    return key ? [key] : [];
  }
}

const jwks = new Jwks(args["jwks-url"]);

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
}

async function verifyJwt(token) {
  const parts = token.split(".");
  if (parts.length < 3) throw decodeError("Invalid JWT serialization: Missing dot delimiter(s)");
  let header;
  let claims;
  try {
    header = b64urlJson(parts[0]);
  } catch {
    throw decodeError("Invalid unsecured/JWS/JWE header: Invalid JSON");
  }
  try {
    claims = b64urlJson(parts[1]);
  } catch {
    throw decodeError("Payload of JWS object is not a valid JSON object");
  }
  if (!header || typeof header !== "object" || !("alg" in header)) {
    throw decodeError('Invalid unsecured/JWS/JWE header: Missing "alg" in header JSON object');
  }
  if (typeof claims !== "object" || claims === null || Array.isArray(claims)) {
    throw decodeError("Payload of JWS object is not a valid JSON object");
  }
  // Nimbus' "Signed JWT rejected: ..." (another alg, no matching key, bad signature) is what
  // Spring's reactive decoder words as "Failed to validate the token".
  if (header.alg !== "RS256" || parts.length !== 3) throw notValidated();
  let keys;
  try {
    keys = await jwks.keysFor(header.kid);
  } catch (e) {
    log(`cannot fetch the JWKS: ${e.message}`);
    throw decodeError("Couldn't retrieve remote JWK set");
  }
  if (!keys.length) throw notValidated();
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`, "ascii");
  const signature = Buffer.from(parts[2], "base64url");
  if (!keys.some((k) => crypto.verify("sha256", signed, k, signature))) throw notValidated();
  const now = Date.now() / 1000;
  // JwtTimestampValidator: exp and nbf only when present, 60 s of skew by default
  if (typeof claims.exp === "number" && claims.exp + CLOCK_SKEW <= now) {
    throw appError(`Jwt expired at ${instant(claims.exp)}`);
  }
  if (typeof claims.nbf === "number" && claims.nbf - CLOCK_SKEW > now) {
    throw appError(`Jwt used before ${instant(claims.nbf)}`);
  }
  if (SCOPE) {
    // not a check of the public service: what a Spring authorisation rule would answer
    const scopes = Array.isArray(claims.scope)
      ? claims.scope
      : String(claims.scope || "").split(/\s+/);
    if (!scopes.includes(SCOPE)) throw accessDenied();
  }
  return claims;
}

// ---------------------------------------------------------------------------------------------
// Composite metadata

function mimeOf(entry) {
  if (entry instanceof WellKnownMimeTypeEntry) return entry.type.string;
  if (entry instanceof ExplicitMimeTimeEntry) return entry.type;
  return null; // reserved id unknown to rsocket-js
}

function decodeMetadata(metadata) {
  if (!metadata || metadata.length === 0) return [];
  try {
    return [...decodeCompositeMetadata(metadata)].map((e) => ({ mime: mimeOf(e), content: e.content }));
  } catch (e) {
    throw appError(`Malformed composite metadata: ${e.message}`);
  }
}

// The bearer token from any of the three forms Spring's server accepts.
function findToken(entries) {
  for (const { mime, content } of entries) {
    if (mime === AUTH_MIME) {
      let auth;
      try {
        auth = decodeAuthMetadata(content);
      } catch (e) {
        log(`malformed authentication metadata: ${e.message}`);
        throw accessDenied();
      }
      if (auth.type.string !== WellKnownAuthType.BEARER.string) {
        log(`unsupported authentication type ${auth.type.string}`);
        throw accessDenied();
      }
      return auth.payload.toString("utf8");
    }
    if (mime === LEGACY_BEARER_MIME) return content.toString("utf8");
  }
  throw accessDenied();
}

function findRoute(entries) {
  for (const { mime, content } of entries) {
    if (mime === ROUTING_MIME) {
      try {
        const first = decodeRoutes(content).next();
        return first.done ? "" : first.value;
      } catch (e) {
        throw appError(`Malformed routing metadata: ${e.message}`);
      }
    }
  }
  return "";
}

// What the service keeps: { events, dropped: [reason, ...] }. Never an error: the service has
// acknowledged the request before it decodes the data, and drops what it cannot use.
function parseEvents(data) {
  let value;
  try {
    value = JSON.parse((data || Buffer.alloc(0)).toString("utf8"));
  } catch {
    return { events: [], dropped: ["invalid_json"] };
  }
  if (Array.isArray(value) && !ACCEPT_ARRAYS) return { events: [], dropped: ["array"] };
  const events = [];
  const dropped = [];
  for (const ev of Array.isArray(value) ? value : [value]) {
    if (typeof ev !== "object" || ev === null || Array.isArray(ev)) dropped.push("not_an_object");
    else if (!("logger_name" in ev)) dropped.push("no_logger_name");
    else if (ev.logger_name !== "STATUS") dropped.push("not_status");
    else events.push(ev);
  }
  return { events, dropped };
}

// ---------------------------------------------------------------------------------------------
// Requests

async function handleRequest(conn, payload, interaction, state) {
  const entries = decodeMetadata(payload.metadata);
  // Spring Security checks the token before the message handler looks at the route.
  const claims = await verifyJwt(findToken(entries));
  const route = findRoute(entries);
  if (route !== ROUTE) throw appError(`No handler for destination '${route}'`);
  const { events, dropped } = parseEvents(payload.data);
  if (state.cancelled) throw new Error("cancelled before the write");
  for (const reason of dropped) log(`conn ${conn}: acknowledged and dropped: ${reason}`);
  appendLines([
    ...events.map((event) => ({
      event,
      client_id: claims.client_id === undefined ? null : claims.client_id,
      jti: claims.jti === undefined ? null : claims.jti,
      exp: claims.exp,
      interaction,
      conn,
    })),
    ...dropped.map((reason) => ({ dropped: reason, interaction, conn })),
  ]);
  return events.length;
}

function makeResponder(conn) {
  return {
    requestResponse(payload, responder) {
      const state = { cancelled: false };
      handleRequest(conn, payload, "request-response", state).then(
        () => {
          if (state.cancelled) return;
          try {
            responder.onComplete(); // PAYLOAD with COMPLETE and no data, as Spring's Mono<Void>
          } catch (e) {
            log(`conn ${conn}: cannot acknowledge: ${e.message}`);
          }
        },
        (err) => {
          if (state.cancelled) {
            log(`conn ${conn}: request-response cancelled: ${err.message}`);
            return;
          }
          const e = err instanceof RSocketError ? err : appError(String(err.message || err));
          log(`conn ${conn}: request-response rejected: ${e.message}`);
          try {
            responder.onError(e);
          } catch (e2) {
            log(`conn ${conn}: cannot send error: ${e2.message}`);
          }
        },
      );
      return {
        cancel() {
          state.cancelled = true;
        },
        onExtension() {},
      };
    },

    fireAndForget(payload) {
      const state = { cancelled: false };
      handleRequest(conn, payload, "fire-and-forget", state).catch((err) => {
        log(`conn ${conn}: fire-and-forget dropped: ${err.message}`);
      });
      return {
        cancel() {
          state.cancelled = true;
        },
      };
    },

    close(error) {
      log(`conn ${conn}: closed${error ? `: ${error.message}` : ""}`);
    },
  };
}

let connections = 0;

const acceptor = {
  async accept(setup) {
    const conn = ++connections;
    const info = {
      conn,
      metadata_mime_type: setup.metadataMimeType,
      data_mime_type: setup.dataMimeType,
      keepalive_interval_ms: setup.keepAliveInterval,
      max_lifetime_ms: setup.keepAliveMaxLifetime,
      flags: setup.flags,
      has_metadata: Boolean(setup.metadata && setup.metadata.length),
      has_data: Boolean(setup.data && setup.data.length),
      accepted: true,
    };
    let reason = null;
    if (setup.metadataMimeType !== COMPOSITE_MIME) {
      reason = `Unsupported metadata MIME type ${setup.metadataMimeType}, expected ${COMPOSITE_MIME}`;
    } else if (setup.dataMimeType !== JSON_MIME) {
      reason = `Unsupported data MIME type ${setup.dataMimeType}, expected ${JSON_MIME}`;
    }
    if (reason) {
      info.accepted = false;
      info.reason = reason;
    }
    appendLines([{ setup: info }]);
    log(`conn ${conn}: SETUP ${JSON.stringify(info)}`);
    // Thrown here, rsocket-js answers ERROR[REJECTED_SETUP] with this message and closes.
    if (reason) throw rsocketError(ErrorCodes.REJECTED_SETUP, reason);
    return makeResponder(conn);
  },
};

// ---------------------------------------------------------------------------------------------
// TCP. rsocket-js alpha.3 decodes the connection's first frame from the first 'data' chunk
// alone, and throws (an unhandled rejection that kills Node by default) when a SETUP frame is
// split across two TCP reads. So connections are handed to it only once a whole first frame is
// buffered, and put back with unshift() as one chunk.

function whenFirstFrameBuffered(socket, handOver) {
  let buffer = Buffer.alloc(0);
  let settled = false;
  const onData = (chunk) => {
    buffer = buffer.length ? Buffer.concat([buffer, chunk]) : chunk;
    if (buffer.length < 3) return;
    const length = buffer.readUIntBE(0, 3);
    if (buffer.length < 3 + length) return;
    socket.off("data", onData);
    settled = true;
    let first;
    try {
      const next = deserializeFrames(buffer).next();
      first = next.done ? undefined : next.value[0];
    } catch (e) {
      first = undefined;
      log(`first frame undecodable: ${e.message}`);
    }
    if (!first || (first.type !== FrameTypes.SETUP && first.type !== FrameTypes.RESUME)) {
      log(`closing a connection whose first frame is not SETUP (type ${first && first.type})`);
      socket.destroy();
      return;
    }
    socket.pause();
    socket.unshift(buffer);
    buffer = Buffer.alloc(0);
    handOver(socket);
    socket.resume();
  };
  socket.on("data", onData);
  socket.once("close", () => {
    if (!settled && buffer.length) {
      log(`connection closed after ${buffer.length} byte(s), before a whole first frame`);
    }
  });
}

function createNetServer(options) {
  const server = new net.Server(options);
  const emit = server.emit;
  server.emit = function (event, ...rest) {
    if (event !== "connection") return emit.call(this, event, ...rest);
    const socket = rest[0];
    socket.setNoDelay(true);
    // A socket error with no listener would crash the process; rsocket-js removes its own
    // listener when it closes the connection, so keep one for the socket's whole life.
    socket.on("error", (e) => log(`socket error: ${e.message}`));
    whenFirstFrameBuffered(socket, (s) => emit.call(server, "connection", s));
    return true;
  };
  return server;
}

async function main() {
  let netServer;
  const transport = new TcpServerTransport({
    listenOptions: { host: args.host, port: PORT },
    socketCreator: (options) => {
      netServer = createNetServer(options);
      return netServer;
    },
  });
  const rsocketServer = new RSocketServer({
    transport,
    acceptor,
    // rsocket-java servers send KEEPALIVE frames too (at the interval from SETUP).
    serverSideKeepAlive: !args["no-server-keepalive"],
  });
  const closeable = await rsocketServer.bind();
  const { port } = netServer.address();
  log(
    `listening on ${args.host}:${port} route=${ROUTE} jwks=${args["jwks-url"]}` +
      ` scope=${SCOPE || "(any)"} out=${OUT}`,
  );
  process.stdout.write(`LISTENING ${port}\n`);

  const shutdown = (signal) => {
    log(`${signal}: shutting down`);
    try {
      closeable.close();
    } catch {
      // ignore
    }
    process.exit(0);
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
}

main().catch((e) => {
  log("cannot start:", (e && e.stack) || e);
  process.exit(1);
});
