/* The state diagrams, generated at build time from statemachines/ (states.json, written by
 * `python -m statemachines --json`): each table's Mermaid diagram, its states and its
 * transitions. */
import React, { useEffect, useRef, useState } from "react";
import { Alert } from "@patternfly/react-core";
import { Table, Caption, Thead, Tbody, Tr, Th, Td } from "@patternfly/react-table";

import { Section } from "./util.jsx";

let mermaidReady = null;

function loadMermaid() {
    if (!mermaidReady) {
        mermaidReady = import("mermaid").then(module => {
            const mermaid = module.default;
            mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "neutral" });
            return mermaid;
        });
    }
    return mermaidReady;
}

function Diagram({ table }) {
    const box = useRef(null);
    const [error, setError] = useState(null);
    useEffect(() => {
        let gone = false;
        loadMermaid()
                .then(mermaid => mermaid.render(`diagram-${table.name}`, table.mermaid))
                .then(({ svg }) => {
                    if (!gone && box.current) {
                        box.current.innerHTML = svg;
                        const el = box.current.querySelector("svg");
                        if (el)
                            el.setAttribute("aria-hidden", "true");
                    }
                })
                .catch(e => !gone && setError(String(e.message || e)));
        return () => { gone = true };
    }, [table]);
    return (
        <>
            {error && <Alert isInline variant="warning" title={`The diagram could not be drawn: ${error}`} />}
            <div ref={box} className="pd-diagram" role="img" data-testid={`diagram-${table.name}`}
                 aria-label={`State diagram of ${table.title}: ${table.states.length} states and ${table.transitions.length} transitions, listed in the tables below`} />
        </>
    );
}

export function Diagrams({ states, error }) {
    return (
        <Section id="diagrams" title="State diagrams">
            <p className="pd-muted">Generated from the state tables in <code>statemachines/</code> when this page was built
                (<code>{states?.generated_by || "python -m statemachines --json"}</code>), like <code>docs/states.md</code>.</p>
            {error && <Alert isInline variant="danger" title={`The state tables could not be read: ${error.message || error}`} />}
            {states && states.tables.map(table => (
                <Section key={table.name} id={`diagram-section-${table.name}`} title={table.title} level="h3">
                    <p className="pd-muted">From <code>{table.source}</code>.</p>
                    <Diagram table={table} />
                    <Table aria-label={`States of ${table.title}`} variant="compact" className="pd-table">
                        <Caption>States</Caption>
                        <Thead><Tr><Th>State</Th><Th>Meaning</Th><Th>Kind</Th></Tr></Thead>
                        <Tbody>
                            {table.states.map(s => (
                                <Tr key={s.value}>
                                    <Td dataLabel="State"><code>{s.value}</code></Td>
                                    <Td dataLabel="Meaning">{s.meaning}</Td>
                                    <Td dataLabel="Kind">{[
                                        s.value === table.initial && "initial",
                                        s.terminal && "terminal",
                                        s.resting && "resting (no step)",
                                        s.acts_outside && "acts outside the database (durable first)",
                                    ].filter(Boolean).join(", ")}</Td>
                                </Tr>
                            ))}
                        </Tbody>
                    </Table>
                    <Table aria-label={`Transitions of ${table.title}`} variant="compact" className="pd-table">
                        <Caption>Transitions</Caption>
                        <Thead><Tr><Th>Trigger</Th><Th>From</Th><Th>To</Th><Th>Fired by</Th></Tr></Thead>
                        <Tbody>
                            {table.transitions.map((t, i) => (
                                <Tr key={i}>
                                    <Td dataLabel="Trigger"><code>{t.trigger}</code></Td>
                                    <Td dataLabel="From"><code>{t.from}</code></Td>
                                    <Td dataLabel="To"><code>{t.to}</code></Td>
                                    <Td dataLabel="Fired by">{t.fired_by}</Td>
                                </Tr>
                            ))}
                        </Tbody>
                    </Table>
                </Section>
            ))}
        </Section>
    );
}
