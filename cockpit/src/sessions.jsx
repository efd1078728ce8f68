/* The serial console (xterm.js) and the graphical display (noVNC), each over the daemon's
 * WebSocket on its Unix socket, spoken over a Cockpit stream channel that the bridge opens as
 * the logged-in user (api.js: StreamWebSocket). */
import React, { useEffect, useRef, useState } from "react";
import { Alert, Button, Flex, FlexItem } from "@patternfly/react-core";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import "@xterm/xterm/css/xterm.css";
import RFBModule from "@novnc/novnc/lib/rfb";

import { Section } from "./util.jsx";

const RFB = RFBModule.default || RFBModule;

/* The daemon's close codes (daemon/api/sessions.py), with the reason it gave. */
const CLOSE_CODES = {
    1000: "closed", 1001: "provisiond is stopping", 1011: "libvirt failed while relaying",
    4001: "another session took it over", 4002: "idle for too long",
};

function closed(event) {
    const what = CLOSE_CODES[event.code] || `closed (code ${event.code})`;
    return `Disconnected: ${what}${event.reason && event.reason !== what ? `: ${event.reason}` : ""}.`;
}

/* A session's state machine: idle -> connecting -> connected -> idle (with a message). */
function useSession(client, request, kind, attach) {
    const [status, setStatus] = useState("idle");
    const [message, setMessage] = useState(null);
    const [refused, setRefused] = useState(false);
    const socket = useRef(null);
    const detach = useRef(null);
    const path = `/v1/requests/${request.id}/${kind}`;

    function disconnect() {
        if (socket.current) {
            const s = socket.current;
            socket.current = null;
            s.close();
        }
        if (detach.current) {
            detach.current();
            detach.current = null;
        }
        setStatus("idle");
    }

    function connect(force = false) {
        disconnect();
        setMessage(null);
        setRefused(false);
        setStatus("connecting");
        const target = path + (force ? "?force=true" : "");
        const ws = client.websocket(target);
        socket.current = ws;
        let opened = false;
        ws.listen("open", () => {
            opened = true;
            setStatus("connected");
        });
        ws.listen("close", event => {
            if (socket.current !== ws)
                return;
            socket.current = null;
            if (detach.current) {
                detach.current();
                detach.current = null;
            }
            setStatus("idle");
            if (opened) {
                setMessage({ variant: event.wasClean ? "info" : "warning", text: closed(event) });
            } else {
                // Refused before the upgrade: the daemon's own words (409: in use, or not running)
                setRefused(event.status === 409);
                setMessage({ variant: "danger", text: event.reason || "The connection was refused." });
            }
        });
        detach.current = attach(ws);
    }

    useEffect(() => disconnect, [request.id]); // eslint-disable-line react-hooks/exhaustive-deps
    return { status, message, refused, connect, disconnect, socket };
}

export function Console({ client, request }) {
    const box = useRef(null);
    const term = useRef(null);
    const name = request.name;

    function attach(ws) {
        const terminal = new Terminal({
            screenReaderMode: true, convertEol: false, cursorBlink: true, rows: 24, cols: 80,
            fontFamily: "RedHatMono, monospace", fontSize: 14,
        });
        const fit = new FitAddon();
        terminal.loadAddon(fit);
        box.current.replaceChildren();
        terminal.open(box.current);
        terminal.textarea?.setAttribute("aria-label", `Serial console input of VM ${name}`);
        try { fit.fit() } catch (e) { /* not laid out yet */ }
        const decoder = new TextDecoder();
        ws.onmessage = event => terminal.write(decoder.decode(new Uint8Array(event.data), { stream: true }));
        const input = terminal.onData(data => ws.send(data));
        const binary = terminal.onBinary(data => ws.send(Uint8Array.from(data, c => c.charCodeAt(0))));
        term.current = terminal;
        terminal.focus();
        return () => {
            input.dispose();
            binary.dispose();
            terminal.dispose();
            term.current = null;
        };
    }

    const session = useSession(client, request, "console", attach);
    const running = request.vm?.state === "running";

    return (
        <Section id="console" title="Serial console" level="h3">
            <SessionBar session={session} kind="console" what="the serial console" name={name} running={running}
                        connectedText="Connected: you are typing into the VM's serial console.">
                {session.refused && (
                    <FlexItem>
                        <Button variant="warning" aria-label={`Take over the serial console of VM ${name}`}
                                onClick={() => session.connect(true)}>Take over</Button>
                    </FlexItem>
                )}
            </SessionBar>
            <div ref={box} className="pd-terminal" role="region" aria-label={`Serial console of VM ${name}`}
                 data-testid="console-terminal" hidden={session.status === "idle"} />
        </Section>
    );
}

/* The bar over a session: connect or disconnect, the session's own buttons (children), its
 * status, and the daemon's message. `what` names the session in the buttons' labels. */
function SessionBar({ session, kind, what, name, running, connectedText, children }) {
    const status = !running && session.status === "idle" ? "The VM is not running."
        : session.status === "connecting" ? "Connecting…"
            : session.status === "connected" ? connectedText : "";
    return (
        <>
            <Flex spaceItems={{ default: "spaceItemsSm" }} className="pd-session-bar">
                <FlexItem>
                    {session.status === "idle"
                        ? <Button variant="secondary" aria-label={`Connect to ${what} of VM ${name}`}
                                  isDisabled={!running} onClick={() => session.connect(false)}>Connect</Button>
                        : <Button variant="secondary" aria-label={`Disconnect from ${what} of VM ${name}`}
                                  onClick={session.disconnect}>Disconnect</Button>}
                </FlexItem>
                {children}
                <FlexItem className="pd-muted" aria-live="polite" data-testid={`${kind}-status`}>{status}</FlexItem>
            </Flex>
            {session.message && <Alert isInline variant={session.message.variant} title={session.message.text}
                                       data-testid={`${kind}-message`} />}
        </>
    );
}

export function Display({ client, request }) {
    const box = useRef(null);
    const rfb = useRef(null);
    const name = request.name;

    function attach(ws) {
        box.current.replaceChildren();
        let display;
        try {
            display = new RFB(box.current, ws, { shared: true });
        } catch (e) {
            ws.close();
            return () => {};
        }
        let connected = true;
        display.addEventListener("disconnect", () => { connected = false });
        display.scaleViewport = true;
        display.focusOnClick = true;
        display.addEventListener("securityfailure", e => console.warn("VNC security failure", e.detail));
        rfb.current = display;
        return () => {
            if (connected) {
                connected = false;
                try { display.disconnect() } catch (e) { /* already gone */ }
            }
            rfb.current = null;
        };
    }

    const session = useSession(client, request, "display", attach);
    const running = request.vm?.state === "running";

    return (
        <Section id="display" title="Graphical display" level="h3">
            <SessionBar session={session} kind="display" what="the display" name={name} running={running}
                        connectedText="Connected.">
                {session.status === "connected" && (
                    <FlexItem>
                        <Button variant="secondary" aria-label={`Send Ctrl+Alt+Del to VM ${name}`}
                                onClick={() => rfb.current && rfb.current.sendCtrlAltDel()}>Send Ctrl+Alt+Del</Button>
                    </FlexItem>
                )}
            </SessionBar>
            <div ref={box} className="pd-display" role="application" aria-label={`Graphical display of VM ${name}`}
                 data-testid="display-screen" hidden={session.status === "idle"} />
        </Section>
    );
}
