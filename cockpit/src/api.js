/* provisiond's HTTP/JSON API over its Unix socket, through Cockpit's bridge.
 *
 * Every call is a cockpit.http request on the daemon's socket, opened by the bridge that
 * runs as the logged-in user (never superuser): the daemon sees that user's uid through
 * SO_PEERCRED and applies their grants. No token, no TCP port.
 */

const cockpit = window.cockpit;

export const SYSTEM_SOCKET = "/run/provisiond/provisiond.sock";
export const VM_BUSY_STATES = ["starting", "stopping", "powering-off", "rebooting", "deleting",
    "installed"];
export const TERMINAL_STATES = ["done", "failed"];

/* An error as the page shows it: the daemon's message (and field), else what Cockpit or
 * the connection said. */
export class ApiError extends Error {
    constructor(message, { status = null, code = null, field = null, problem = null } = {}) {
        super(message);
        this.status = status;
        this.code = code;
        this.field = field;
        this.problem = problem;
    }
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

function text(data) {
    if (data === undefined || data === null)
        return "";
    if (typeof data === "string")
        return data;
    return decoder.decode(data);
}

const PROBLEMS = {
    "not-found": "no such socket",
    "access-denied": "permission denied (is your user in the socket's group?)",
    "disconnected": "the connection closed before an answer",
    "protocol-error": "not an HTTP answer (is this provisiond's socket?)",
};

export function problemMessage(problem) {
    return PROBLEMS[problem] || cockpit.message({ problem });
}

function apiError(error, content) {
    const body = text(content);
    if (error && error.problem)
        return new ApiError(problemMessage(error.problem), { problem: error.problem });
    try {
        const parsed = JSON.parse(body);
        if (parsed && parsed.error && parsed.error.message)
            return new ApiError(parsed.error.message, {
                status: error?.status ?? null, code: parsed.error.code, field: parsed.error.field || null,
            });
    } catch (e) { /* not JSON: fall through */ }
    const status = error?.status;
    return new ApiError(body || (status ? `${status} ${error.reason || error.message || ""}`.trim()
        : String(error?.message || error)), { status: status ?? null });
}

/* One daemon, reached on one socket path. */
export class Client {
    constructor(socket) {
        this.socket = socket;
        // binary: the body is bytes decoded here (Cockpit's text channels mangle some input)
        this.http = cockpit.http({ unix: socket, superuser: false, binary: true });
    }

    /* method, path (with its query), JSON body or undefined -> decoded JSON answer */
    call(method, path, body) {
        const headers = { Accept: "application/json" };
        const request = { method, path, headers };
        if (body !== undefined) {
            headers["Content-Type"] = "application/json";
            request.body = encoder.encode(JSON.stringify(body));
        } else {
            request.body = "";
        }
        return new Promise((resolve, reject) => {
            this.http.request(request)
                    .then(data => {
                        const raw = text(data);
                        try {
                            resolve(raw ? JSON.parse(raw) : null);
                        } catch (e) {
                            reject(new ApiError(`not a JSON answer from ${this.socket}: ${raw.slice(0, 200)}`));
                        }
                    })
                    // cockpit's promise passes the body as a second argument
                    .catch((error, content) => reject(apiError(error, content)));
        });
    }

    health() { return this.call("GET", "/v1/health") }
    whoami() { return this.call("GET", "/v1/whoami") }
    catalog() { return this.call("GET", "/v1/catalog") }
    create(body) { return this.call("POST", "/v1/requests", body) }
    list(query = "") { return this.call("GET", "/v1/requests" + query) }
    get(id, { wait = null, addresses = false } = {}) {
        const params = [];
        if (wait)
            params.push(`wait=${wait}`);
        if (addresses)
            params.push("addresses=true");
        return this.call("GET", `/v1/requests/${encodeURIComponent(id)}` + (params.length ? "?" + params.join("&") : ""));
    }

    log(id) { return this.call("GET", `/v1/requests/${encodeURIComponent(id)}/log`) }
    cancel(id) { return this.call("POST", `/v1/requests/${encodeURIComponent(id)}/cancel`) }
    operate(id, operation, force = false) {
        const path = `/v1/requests/${encodeURIComponent(id)}/${operation}`;
        return operation === "stop" ? this.call("POST", path, { force }) : this.call("POST", path);
    }

    explain(body) { return this.call("POST", "/v1/placement/explain", body) }
    reconcile(apply) { return this.call("POST", "/v1/reconcile", { apply }) }

    /* A WebSocket of the daemon (console, display) as a WebSocket-like object. */
    websocket(path) { return new StreamWebSocket(this.socket, path) }
}

/* A WebSocket (RFC 6455) to the daemon's Unix socket, spoken here over a raw Cockpit
 * "stream" channel that the bridge opens as the logged-in user; shaped like a browser
 * WebSocket so that noVNC can attach it and xterm be fed from it.
 *
 * Why not Cockpit's websocket-stream1 channel: Debian 12's bridge (cockpit 287) builds
 * the URL ws://<unix path><path> for a Unix socket, which its own URL parser refuses (the
 * channel closes with "internal-error" before connecting), and later bridges (the Python
 * one) have no websocket-stream1 at all. A stream channel works on every Cockpit, and
 * here a refusal (404, 409, 501) comes with the daemon's own JSON message, a close with
 * its code and reason. */
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

export class StreamWebSocket {
    constructor(socket, path) {
        this.binaryType = "arraybuffer";
        this.protocol = "";
        this.readyState = 0; // CONNECTING
        this.onopen = null;
        this.onmessage = null;
        this.onclose = null;
        this.onerror = null;
        this.listeners = { open: [], close: [] };
        this.buffer = new Uint8Array(0);
        this.fragments = [];
        this.closeSent = false;
        this.ended = false;
        this.channel = cockpit.channel({ payload: "stream", unix: socket, binary: true, superuser: false });
        this.channel.addEventListener("message", (ev, data) => this.received(data));
        this.channel.addEventListener("close", (ev, options) => {
            if (options.problem)
                this.end(1006, `${problemMessage(options.problem)} (${socket})`, false);
            else
                this.end(1006, "the daemon closed the connection", false);
        });
        const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
        this.channel.send(encoder.encode(`GET ${path} HTTP/1.1\r\nHost: localhost\r\n` +
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" +
            `Sec-WebSocket-Key: ${key}\r\n\r\n`));
    }

    /* Listeners of our own: noVNC takes the on* properties over. */
    listen(type, fn) {
        this.listeners[type].push(fn);
    }

    received(data) {
        const bytes = data instanceof Uint8Array ? data : encoder.encode(data);
        const joined = new Uint8Array(this.buffer.length + bytes.length);
        joined.set(this.buffer);
        joined.set(bytes, this.buffer.length);
        this.buffer = joined;
        if (this.readyState === 0)
            this.handshake();
        if (this.readyState === OPEN || this.readyState === CLOSING)
            this.frames();
    }

    /* The answer to the upgrade: 101, or the daemon's refusal with its JSON error. */
    handshake() {
        const b = this.buffer;
        let end = -1;
        for (let i = 0; i + 3 < b.length; i++) {
            if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) {
                end = i;
                break;
            }
        }
        if (end < 0)
            return;
        const head = decoder.decode(b.subarray(0, end));
        const status = parseInt((/^HTTP\/1\.[01] (\d{3})/.exec(head) || [])[1] || "0", 10);
        if (status === 101) {
            this.buffer = b.subarray(end + 4);
            this.readyState = OPEN;
            if (this.onopen)
                this.onopen({ type: "open" });
            this.listeners.open.forEach(fn => fn({ type: "open" }));
            return;
        }
        const length = parseInt((/\r\ncontent-length:\s*(\d+)/i.exec(head) || [])[1] || "0", 10);
        const body = b.subarray(end + 4);
        if (body.length < length)
            return; // more to come
        let message = head.split("\r\n")[0];
        try {
            message = JSON.parse(decoder.decode(body.subarray(0, length))).error.message;
        } catch (e) { /* not the API's error: the status line says what happened */ }
        this.end(status || 1006, message, false, status);
    }

    frames() {
        for (;;) {
            const b = this.buffer;
            if (b.length < 2)
                return;
            const fin = (b[0] & 0x80) !== 0;
            const opcode = b[0] & 0x0f;
            const masked = (b[1] & 0x80) !== 0;
            let length = b[1] & 0x7f;
            let offset = 2;
            if (length === 126) {
                if (b.length < 4)
                    return;
                length = (b[2] << 8) | b[3];
                offset = 4;
            } else if (length === 127) {
                if (b.length < 10)
                    return;
                length = 0;
                for (let i = 2; i < 10; i++)
                    length = length * 256 + b[i];
                offset = 10;
            }
            const maskOffset = offset;
            if (masked)
                offset += 4;
            if (b.length < offset + length)
                return;
            let payload = b.slice(offset, offset + length);
            if (masked)
                payload = payload.map((x, i) => x ^ b[maskOffset + (i % 4)]);
            this.buffer = b.subarray(offset + length);
            if (opcode === 0x8) { // close
                const code = payload.length >= 2 ? (payload[0] << 8) | payload[1] : 1005;
                const reason = decoder.decode(payload.subarray(2));
                if (!this.closeSent)
                    this.sendFrame(0x8, payload.subarray(0, 2));
                this.end(code, reason, code === 1000 || code === 1001);
                return;
            } else if (opcode === 0x9) { // ping: the daemon's heartbeat wants a pong
                this.sendFrame(0xA, payload);
            } else if (opcode === 0xA) { // pong
                continue;
            } else {
                this.fragments.push(payload);
                if (fin) {
                    const total = this.fragments.reduce((n, f) => n + f.length, 0);
                    const message = new Uint8Array(total);
                    let at = 0;
                    for (const f of this.fragments) {
                        message.set(f, at);
                        at += f.length;
                    }
                    this.fragments = [];
                    if (this.onmessage && this.readyState === OPEN)
                        this.onmessage({ type: "message", data: message.buffer });
                }
            }
        }
    }

    sendFrame(opcode, payload) {
        if (this.ended)
            return;
        if (opcode === 0x8)
            this.closeSent = true;
        const length = payload.length;
        const head = length < 126 ? 2 : length < 65536 ? 4 : 10;
        const frame = new Uint8Array(head + 4 + length);
        frame[0] = 0x80 | opcode;
        if (length < 126) {
            frame[1] = 0x80 | length;
        } else if (length < 65536) {
            frame[1] = 0x80 | 126;
            frame[2] = length >> 8;
            frame[3] = length & 0xff;
        } else {
            frame[1] = 0x80 | 127;
            let n = length;
            for (let i = 9; i >= 2; i--) {
                frame[i] = n % 256;
                n = Math.floor(n / 256);
            }
        }
        const mask = crypto.getRandomValues(new Uint8Array(4));
        frame.set(mask, head);
        for (let i = 0; i < length; i++)
            frame[head + 4 + i] = payload[i] ^ mask[i % 4];
        this.channel.send(frame);
    }

    send(data) {
        if (this.readyState !== OPEN)
            return;
        if (typeof data === "string")
            data = encoder.encode(data);
        else if (data instanceof ArrayBuffer)
            data = new Uint8Array(data);
        else if (ArrayBuffer.isView(data) && !(data instanceof Uint8Array))
            data = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        this.sendFrame(0x2, data);
    }

    close() {
        if (this.readyState >= CLOSING)
            return;
        if (this.readyState === OPEN) {
            this.readyState = CLOSING;
            this.sendFrame(0x8, new Uint8Array([0x03, 0xe8])); // 1000
            setTimeout(() => this.end(1000, "closed by you", true), 2000); // if no answer
        } else {
            this.end(1000, "closed by you", true);
        }
    }

    /* The one close event: code and reason as the daemon gave them (or the refusal's
     * status and message when it never opened). */
    end(code, reason, wasClean, status = null) {
        if (this.ended)
            return;
        const opened = this.readyState === OPEN || this.readyState === CLOSING;
        this.ended = true;
        this.readyState = CLOSED;
        this.channel.close();
        const event = { type: "close", code, reason, wasClean, opened, status };
        if (!wasClean && this.onerror)
            this.onerror({ type: "error", reason });
        if (this.onclose)
            this.onclose(event);
        this.listeners.close.forEach(fn => fn(event));
    }
}

/* The sockets tried, in order: the page URL's `socket` (development, tests), the system
 * service's, the user's own daemon's. */
export function candidateSockets(uid) {
    const paths = [];
    const given = new URLSearchParams(window.location.search).get("socket") ||
        (cockpit.location && cockpit.location.options && cockpit.location.options.socket);
    if (given)
        paths.push(String(given));
    paths.push(SYSTEM_SOCKET);
    if (uid !== null && uid !== undefined)
        paths.push(`/run/user/${uid}/provisiond/provisiond.sock`);
    return [...new Set(paths)];
}

/* The first socket whose GET /v1/health answers: {client, health, tried}; or throws an
 * ApiError whose `tried` lists each path with what happened there. */
export async function connect() {
    let uid = null;
    try {
        const user = await cockpit.user();
        uid = user.id;
    } catch (e) { /* unknown: the user socket is not tried */ }
    const tried = [];
    for (const socket of candidateSockets(uid)) {
        const client = new Client(socket);
        try {
            const health = await withTimeout(client.health(), 5000, `no answer within 5 s`);
            return { client, health, tried };
        } catch (e) {
            tried.push({ socket, error: e.message });
        }
    }
    const error = new ApiError("provisiond is not reachable on any of its sockets");
    error.tried = tried;
    throw error;
}

export function withTimeout(promise, ms, message) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new ApiError(message)), ms);
        promise.then(v => { clearTimeout(timer); resolve(v) },
                     e => { clearTimeout(timer); reject(e) });
    });
}
