import React, { useEffect, useState } from "react";
import {
    ActionGroup, Button, DescriptionList, DescriptionListDescription, DescriptionListGroup,
    DescriptionListTerm, Form, Label,
} from "@patternfly/react-core";
import { Table, Caption, Thead, Tbody, Tr, Th, Td } from "@patternfly/react-table";

import { ChoiceFields, useChoice } from "./catalog.jsx";
import { ErrorAlert, Section } from "./util.jsx";

function Verdict({ verdict }) {
    return <Label isCompact color={verdict === "ok" ? "green" : "red"}>{verdict}</Label>;
}

export function Explain({ client, catalog, catalogError, preset }) {
    const choice = useChoice(catalog, preset || {});
    const [decision, setDecision] = useState(null);
    const [error, setError] = useState(null);
    const [busy, setBusy] = useState(false);

    useEffect(() => {
        if (preset) {
            choice.setTemplate(preset.template);
            choice.setSize(preset.size);
            choice.setPool(preset.pool);
        }
    }, [preset]); // eslint-disable-line react-hooks/exhaustive-deps

    function submit(event) {
        event.preventDefault();
        setBusy(true);
        setError(null);
        client.explain({ template: choice.template, size: choice.size, resource_pool: choice.pool })
                .then(d => { setBusy(false); setDecision(d) })
                .catch(e => { setBusy(false); setDecision(null); setError(e) });
    }

    const stages = decision ? [...new Set(decision.candidates.map(c => c.stage))] : [];
    return (
        <Section id="explain" title="Placement dry run">
            <p className="pd-muted">What would happen to a request now, without making it: each host's and each
                storage candidate's verdict, as <code>provctl explain</code> shows them.</p>
            <ErrorAlert error={catalogError} title="The catalog could not be read" />
            <Form onSubmit={submit} className="pd-form" aria-label="Placement dry run">
                <ChoiceFields idPrefix="explain" catalog={catalog} choice={choice} errorField={error?.field} />
                <ActionGroup>
                    <Button type="submit" variant="primary" isLoading={busy} isDisabled={busy || !catalog}>Explain</Button>
                </ActionGroup>
            </Form>
            <ErrorAlert error={error} title="The dry run was refused" />
            {decision && (
                <div data-testid="explain-result" className="pd-result">
                    <DescriptionList isHorizontal isCompact aria-label="Decision">
                        <DescriptionListGroup>
                            <DescriptionListTerm>Decision</DescriptionListTerm>
                            <DescriptionListDescription><strong>{decision.action}</strong>: {decision.reason}</DescriptionListDescription>
                        </DescriptionListGroup>
                        <DescriptionListGroup>
                            <DescriptionListTerm>Host</DescriptionListTerm>
                            <DescriptionListDescription>{decision.host || "none"}</DescriptionListDescription>
                        </DescriptionListGroup>
                        <DescriptionListGroup>
                            <DescriptionListTerm>Storage pool</DescriptionListTerm>
                            <DescriptionListDescription>{decision.pool || "none"}{decision.volume ? ` (volume ${decision.volume})` : ""}</DescriptionListDescription>
                        </DescriptionListGroup>
                    </DescriptionList>
                    <Table aria-label="Hosts" variant="compact" className="pd-table">
                        <Caption>Hosts</Caption>
                        <Thead><Tr><Th>Host</Th><Th>Verdict</Th><Th>Reason</Th></Tr></Thead>
                        <Tbody>
                            {decision.hosts.map(h => (
                                <Tr key={h.host}>
                                    <Td dataLabel="Host">{h.host}</Td>
                                    <Td dataLabel="Verdict"><Verdict verdict={h.verdict} /></Td>
                                    <Td dataLabel="Reason">{h.reason}</Td>
                                </Tr>
                            ))}
                        </Tbody>
                    </Table>
                    {stages.map(stage => (
                        <Table key={stage} aria-label={stage === "reuse" ? "Free volumes" : "Storage pools"} variant="compact" className="pd-table">
                            <Caption>{stage === "reuse" ? "Free volumes (reused first)" : "Storage pools (a new volume)"}</Caption>
                            <Thead><Tr><Th>Pool</Th>{stage === "reuse" && <Th>Volume</Th>}<Th>Verdict</Th><Th>Reason</Th></Tr></Thead>
                            <Tbody>
                                {decision.candidates.filter(c => c.stage === stage).map((c, i) => (
                                    <Tr key={i}>
                                        <Td dataLabel="Pool">{c.pool}</Td>
                                        {stage === "reuse" && <Td dataLabel="Volume">{c.volume}</Td>}
                                        <Td dataLabel="Verdict"><Verdict verdict={c.verdict} /></Td>
                                        <Td dataLabel="Reason">{c.reason}</Td>
                                    </Tr>
                                ))}
                            </Tbody>
                        </Table>
                    ))}
                </div>
            )}
        </Section>
    );
}
