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

function apiError(error, content) {
    const body = text(content);
    if (error && error.problem)
        return new ApiError(cockpit.message(error), { problem: error.problem });
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
    websocket(path) { return new ChannelSocket(this.socket, path) }

    /* Why a WebSocket of the daemon was refused: the daemon answers a refusal before the
     * upgrade, with its JSON error; Cockpit's websocket-stream1 channel only says that the
     * handshake failed. This sends the same handshake on a raw stream and reads the answer. */
    whyRefused(path) {
        return new Promise(resolve => {
            const channel = cockpit.channel({ payload: "stream", unix: this.socket, binary: true, superuser: false });
            const chunks = [];
            let done = false;
            const finish = (message) => {
                if (done)
                    return;
                done = true;
                channel.close();
                resolve(message);
            };
            channel.addEventListener("message", (ev, data) => {
                chunks.push(text(data));
                const all = chunks.join("");
                const head = all.split("\r\n\r\n", 1)[0];
                if (!all.includes("\r\n\r\n"))
                    return;
                if (/^HTTP\/1\.1 101/.test(head))
                    return finish(null); // it would open now: nothing to explain
                const length = /content-length:\s*(\d+)/i.exec(head);
                const body = all.slice(head.length + 4);
                if (length && body.length < parseInt(length[1], 10))
                    return;
                try {
                    finish(JSON.parse(body).error.message);
                } catch (e) {
                    finish(head.split("\r\n")[0]);
                }
            });
            channel.addEventListener("close", (ev, options) => finish(options.problem ? cockpit.message(options) : null));
            const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
            channel.send(encoder.encode(`GET ${path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n` +
                `Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\n\r\n`));
            setTimeout(() => finish(null), 10000);
        });
    }
}

/* A WebSocket to the daemon's Unix socket: Cockpit's websocket-stream1 channel (the bridge
 * is the WebSocket client), shaped like a browser WebSocket so that noVNC can attach it
 * and xterm can be fed from it. Binary messages both ways. */
export class ChannelSocket {
    constructor(socket, path) {
        this.binaryType = "arraybuffer";
        this.protocol = "";
        this.readyState = 0; // CONNECTING
        this.onopen = null;
        this.onmessage = null;
        this.onclose = null;
        this.onerror = null;
        this.problem = null;
        this.listeners = { open: [], close: [] };
        this.channel = cockpit.channel({
            payload: "websocket-stream1", unix: socket, path, binary: true, superuser: false,
        });
        this.channel.addEventListener("ready", () => {
            this.readyState = 1; // OPEN
            if (this.onopen)
                this.onopen({ type: "open" });
            this.listeners.open.forEach(fn => fn({ type: "open" }));
        });
        this.channel.addEventListener("message", (ev, data) => {
            if (this.onmessage) {
                const bytes = data instanceof Uint8Array ? data : encoder.encode(data);
                const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
                this.onmessage({ type: "message", data: buffer });
            }
        });
        this.channel.addEventListener("close", (ev, options) => {
            const opened = this.readyState === 1 || this.readyState === 2;
            this.readyState = 3; // CLOSED
            this.problem = options.problem || null;
            if (this.problem && this.onerror)
                this.onerror({ type: "error", problem: this.problem, opened });
            const event = {
                type: "close", code: this.problem ? 1006 : 1000, wasClean: !this.problem,
                reason: this.problem ? cockpit.message(options) : "", opened,
            };
            if (this.onclose)
                this.onclose(event);
            this.listeners.close.forEach(fn => fn(event));
        });
    }

    /* Listeners of our own: noVNC takes the on* properties over. */
    listen(type, fn) {
        this.listeners[type].push(fn);
    }

    send(data) {
        if (this.readyState !== 1)
            return;
        if (typeof data === "string")
            data = encoder.encode(data);
        else if (data instanceof ArrayBuffer)
            data = new Uint8Array(data);
        else if (ArrayBuffer.isView(data) && !(data instanceof Uint8Array))
            data = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        this.channel.send(data);
    }

    close() {
        if (this.readyState >= 2)
            return;
        this.readyState = 2; // CLOSING
        this.channel.close();
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
