import React, { useEffect, useState } from "react";
import {
    Button, Flex, FlexItem, FormSelect, FormSelectOption, Modal, ModalBody, ModalFooter, ModalHeader,
} from "@patternfly/react-core";
import { Table, Caption, Thead, Tbody, Tr, Th, Td } from "@patternfly/react-table";

import { RequestTable } from "./requests.jsx";
import { ErrorAlert, Section } from "./util.jsx";

/* For a CLOUD_ADMIN: the requests of the pools they administer, and the orphan
 * reconciler. The daemon decides who is an admin: a reconcile dry run answers 403
 * otherwise, with its message. */
export function Admin({ client, requests, user, onOpen }) {
    const [result, setResult] = useState(null);
    const [error, setError] = useState(null);
    const [busy, setBusy] = useState(null);
    const [confirm, setConfirm] = useState(false);
    const [pool, setPool] = useState("");

    function reconcile(apply) {
        setConfirm(false);
        setBusy(apply ? "apply" : "look");
        setError(null);
        client.reconcile(apply)
                .then(r => { setBusy(null); setResult(r) })
                .catch(e => { setBusy(null); setResult(null); setError(e) });
    }

    useEffect(() => { reconcile(false) }, [client]); // eslint-disable-line react-hooks/exhaustive-deps

    const isAdmin = result !== null;
    const pools = [...new Set((requests || []).map(r => r.resource_pool))].sort();
    const shown = (requests || []).filter(r => !pool || r.resource_pool === pool)
            .sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    const others = (requests || []).filter(r => r.owner !== user).length;

    return (
        <Section id="admin" title="Administration">
            <Section id="reconcile" title="Orphaned volumes and domains" level="h3">
                <p className="pd-muted">Volumes and domains that carry provisiond's tags but belong to no live or done
                    request, on the hosts of the resource pools where you hold CLOUD_ADMIN.</p>
                <Flex spaceItems={{ default: "spaceItemsSm" }}>
                    <FlexItem>
                        <Button variant="secondary" onClick={() => reconcile(false)} isLoading={busy === "look"} isDisabled={busy !== null}>
                            Look for orphans
                        </Button>
                    </FlexItem>
                    <FlexItem>
                        <Button variant="danger" onClick={() => setConfirm(true)} isLoading={busy === "apply"}
                                isDisabled={busy !== null || !isAdmin || !result.orphans.length}>
                            Remove orphans
                        </Button>
                    </FlexItem>
                </Flex>
                <ErrorAlert error={error} title="The reconciler was refused" />
                {result && (
                    <div data-testid="reconcile-result">
                        <p>{result.applied ? "Removed from" : "Looked at"} hosts: {result.hosts.join(", ") || "none"};{" "}
                            {result.orphans.length ? `${result.orphans.length} orphans.` : "no orphans."}</p>
                        {result.orphans.length > 0 && (
                            <Table aria-label="Orphans" variant="compact" className="pd-table">
                                <Caption>Orphans</Caption>
                                <Thead><Tr><Th>Host</Th><Th>Kind</Th><Th>Name</Th><Th>Pool</Th><Th>Request</Th><Th>Reason</Th><Th>Action</Th></Tr></Thead>
                                <Tbody>
                                    {result.orphans.map((o, i) => (
                                        <Tr key={i}>
                                            <Td dataLabel="Host">{o.host}</Td>
                                            <Td dataLabel="Kind">{o.kind}</Td>
                                            <Td dataLabel="Name">{o.name}</Td>
                                            <Td dataLabel="Pool">{o.pool || ""}</Td>
                                            <Td dataLabel="Request"><code>{o.request_id}</code></Td>
                                            <Td dataLabel="Reason">{o.reason}</Td>
                                            <Td dataLabel="Action">{o.action}</Td>
                                        </Tr>
                                    ))}
                                </Tbody>
                            </Table>
                        )}
                    </div>
                )}
            </Section>
            {isAdmin && (
                <Section id="pool-requests" title="Requests of the pools you administer" level="h3">
                    <p className="pd-muted">Every request you can see: yours, and {others} of other users in the resource pools where you
                        hold CLOUD_ADMIN. You may operate on their VMs too.</p>
                    <FormSelect id="admin-pool" aria-label="Resource pool" value={pool} onChange={(_e, v) => setPool(v)} className="pd-narrow">
                        <FormSelectOption value="" label="All resource pools" />
                        {pools.map(p => <FormSelectOption key={p} value={p} label={p} />)}
                    </FormSelect>
                    <RequestTable requests={shown} onOpen={onOpen} showOwner label="Requests of the pools you administer" />
                </Section>
            )}
            {confirm && (
                <Modal isOpen variant="small" onClose={() => setConfirm(false)} aria-labelledby="reconcile-confirm">
                    <ModalHeader title="Remove the orphans?" labelId="reconcile-confirm" titleIconVariant="warning" />
                    <ModalBody>The volumes are deleted and the domains undefined, on every host listed.</ModalBody>
                    <ModalFooter>
                        <Button variant="danger" onClick={() => reconcile(true)}>Remove</Button>
                        <Button variant="link" onClick={() => setConfirm(false)}>Keep them</Button>
                    </ModalFooter>
                </Modal>
            )}
        </Section>
    );
}
