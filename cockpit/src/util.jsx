import React from "react";
import { Alert, Label } from "@patternfly/react-core";

export const KIB_PER_GIB = 1024 * 1024;

export function memory(kib) {
    if (kib === null || kib === undefined)
        return "";
    if (kib >= KIB_PER_GIB)
        return `${+(kib / KIB_PER_GIB).toFixed(1)} GiB`;
    return `${+(kib / 1024).toFixed(0)} MiB`;
}

export function when(iso) {
    if (!iso)
        return "";
    const d = new Date(iso);
    return d.toLocaleString();
}

/* "12.3 s" between two ISO times */
/* "16:07:36.365", the date in its title */
export function Clock({ iso }) {
    if (!iso)
        return null;
    const d = new Date(iso);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return (
        <time dateTime={iso} title={d.toLocaleString()}>
            {`${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`}
        </time>
    );
}

export function between(a, b) {
    if (!a || !b)
        return "";
    const ms = new Date(b) - new Date(a);
    if (ms < 1000)
        return `${ms} ms`;
    if (ms < 60000)
        return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

const REQUEST_COLORS = { done: "green", failed: "red" };
const VM_COLORS = {
    running: "green", stopped: "grey", crashed: "red", paused: "orange", deleted: "grey", unknown: "orange",
    vanished: "orange",
};

export function RequestState({ state }) {
    return <Label color={REQUEST_COLORS[state] || "blue"} isCompact>{state}</Label>;
}

export function VmState({ vm }) {
    if (!vm)
        return <span className="pd-muted">none yet</span>;
    return <Label color={VM_COLORS[vm.state] || "blue"} isCompact>{vm.state}</Label>;
}

/* An error as the daemon said it, with the field it names. */
export function ErrorAlert({ error, title, onClose, ...props }) {
    if (!error)
        return null;
    const text = error.message || String(error);
    return (
        <Alert variant="danger" isInline title={title || text} data-testid="error" {...props}
               actionClose={onClose ? <button type="button" className="pf-v6-c-button pf-m-plain" aria-label="Dismiss the error" onClick={onClose}>×</button> : undefined}>
            {title ? <p>{text}</p> : null}
            {error.field ? <p>Field: <code>{error.field}</code></p> : null}
        </Alert>
    );
}

/* A section of the page: a region named by its heading, with a stable id and test id. */
export function Section({ id, title, level = "h2", children, actions }) {
    const Heading = level;
    return (
        <section id={id} data-testid={id} aria-labelledby={`${id}-heading`} className="pd-section">
            <div className="pd-section-head">
                <Heading id={`${id}-heading`} className="pd-heading">{title}</Heading>
                {actions ? <div className="pd-section-actions">{actions}</div> : null}
            </div>
            {children}
        </section>
    );
}

/* Operation -> trigger of the VM table, to enable only what the table allows. */
export const OPERATION_TRIGGERS = {
    start: "start", stop: "stop", "force-stop": "force_off", reboot: "reboot", delete: "delete",
};

export function allowed(vmTable, vmState, operation) {
    if (!vmTable || !vmState)
        return false;
    const trigger = OPERATION_TRIGGERS[operation];
    return vmTable.transitions.some(t => t.from === vmState && t.trigger === trigger);
}
