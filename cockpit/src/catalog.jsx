import React, { useEffect, useState } from "react";
import {
    ActionGroup, Button, Checkbox, Form, FormGroup, FormHelperText, FormSelect, FormSelectOption,
    HelperText, HelperTextItem, TextArea, TextInput,
} from "@patternfly/react-core";
import { Table, Caption, Thead, Tbody, Tr, Th, Td } from "@patternfly/react-table";

import { ErrorAlert, Section, memory } from "./util.jsx";

function usage(used, quota, unit = x => x) {
    if (quota === null || quota === undefined)
        return `${unit(used)} (no limit)`;
    return `${unit(used)} of ${unit(quota)}`;
}

function QuotaCell({ pool, key_, unit }) {
    const quota = pool.quota || {};
    const perUser = quota.per_user || {};
    return (
        <>
            <div>{usage(pool.used[key_], quota[key_], unit)}</div>
            <div className="pd-muted">yours: {usage(pool.used_by_you[key_], perUser[key_], unit)}</div>
        </>
    );
}

export function Catalog({ catalog, error }) {
    return (
        <Section id="catalog" title="Catalog">
            <ErrorAlert error={error} title="The catalog could not be read" />
            {catalog && (
                <>
                    <Table aria-label="Templates" variant="compact" className="pd-table">
                        <Caption>Templates: what gets installed</Caption>
                        <Thead><Tr><Th>Name</Th><Th>Kind</Th><Th>Description</Th><Th>Accepts</Th></Tr></Thead>
                        <Tbody>
                            {catalog.templates.map(t => (
                                <Tr key={t.name}>
                                    <Td dataLabel="Name"><strong>{t.name}</strong></Td>
                                    <Td dataLabel="Kind">{t.kind}</Td>
                                    <Td dataLabel="Description">{t.description}</Td>
                                    <Td dataLabel="Accepts">{t.accepts.length ? t.accepts.join(", ") : "nothing more"}</Td>
                                </Tr>
                            ))}
                        </Tbody>
                    </Table>
                    <Table aria-label="Sizes" variant="compact" className="pd-table">
                        <Caption>Sizes</Caption>
                        <Thead><Tr><Th>Name</Th><Th>CPUs</Th><Th>Memory</Th><Th>Storage</Th></Tr></Thead>
                        <Tbody>
                            {catalog.sizes.map(s => (
                                <Tr key={s.name}>
                                    <Td dataLabel="Name"><strong>{s.name}</strong></Td>
                                    <Td dataLabel="CPUs">{s.cpus}</Td>
                                    <Td dataLabel="Memory">{memory(s.memory)}</Td>
                                    <Td dataLabel="Storage">{s.storage_size_in_gb} GiB</Td>
                                </Tr>
                            ))}
                        </Tbody>
                    </Table>
                    <Table aria-label="Resource pools" variant="compact" className="pd-table">
                        <Caption>Resource pools where you may create, with their quota: used by everyone, and by you</Caption>
                        <Thead>
                            <Tr><Th>Name</Th><Th>Hardware pool</Th><Th>VMs</Th><Th>CPUs</Th><Th>Memory</Th><Th>Storage</Th></Tr>
                        </Thead>
                        <Tbody>
                            {catalog.resource_pools.map(p => (
                                <Tr key={p.name}>
                                    <Td dataLabel="Name"><strong>{p.name}</strong><div className="pd-muted">{p.description}</div></Td>
                                    <Td dataLabel="Hardware pool">{p.hardware_pool}</Td>
                                    <Td dataLabel="VMs"><QuotaCell pool={p} key_="vms" /></Td>
                                    <Td dataLabel="CPUs"><QuotaCell pool={p} key_="cpus" /></Td>
                                    <Td dataLabel="Memory"><QuotaCell pool={p} key_="memory" unit={memory} /></Td>
                                    <Td dataLabel="Storage"><QuotaCell pool={p} key_="storage_gb" unit={x => `${x} GiB`} /></Td>
                                </Tr>
                            ))}
                        </Tbody>
                    </Table>
                </>
            )}
        </Section>
    );
}

/* Template, size and pool selects, shared by the create form and the placement dry run. */
export function useChoice(catalog, initial = {}) {
    const [template, setTemplate] = useState(initial.template || "");
    const [size, setSize] = useState(initial.size || "");
    const [pool, setPool] = useState(initial.pool || "");
    useEffect(() => {
        if (!catalog)
            return;
        if (!catalog.templates.some(t => t.name === template) && catalog.templates.length)
            setTemplate(catalog.templates[0].name);
        if (!catalog.sizes.some(s => s.name === size) && catalog.sizes.length)
            setSize(catalog.sizes[0].name);
        if (!catalog.resource_pools.some(p => p.name === pool) && catalog.resource_pools.length)
            setPool(catalog.resource_pools[0].name);
    }, [catalog, template, size, pool]);
    return { template, setTemplate, size, setSize, pool, setPool };
}

export function ChoiceFields({ idPrefix, catalog, choice, errorField }) {
    const { template, setTemplate, size, setSize, pool, setPool } = choice;
    const tpl = catalog?.templates.find(t => t.name === template);
    const sz = catalog?.sizes.find(s => s.name === size);
    return (
        <>
            <FormGroup label="Template" fieldId={`${idPrefix}-template`} isRequired>
                <FormSelect id={`${idPrefix}-template`} value={template} onChange={(_e, v) => setTemplate(v)}
                            validated={errorField === "template" ? "error" : "default"}>
                    {(catalog?.templates || []).map(t => <FormSelectOption key={t.name} value={t.name} label={`${t.name} (${t.kind})`} />)}
                </FormSelect>
                {tpl && <FormHelperText><HelperText><HelperTextItem>{tpl.description}</HelperTextItem></HelperText></FormHelperText>}
            </FormGroup>
            <FormGroup label="Size" fieldId={`${idPrefix}-size`} isRequired>
                <FormSelect id={`${idPrefix}-size`} value={size} onChange={(_e, v) => setSize(v)}
                            validated={errorField === "size" ? "error" : "default"}>
                    {(catalog?.sizes || []).map(s => <FormSelectOption key={s.name} value={s.name} label={s.name} />)}
                </FormSelect>
                {sz && <FormHelperText><HelperText><HelperTextItem>{sz.cpus} CPUs, {memory(sz.memory)} memory, {sz.storage_size_in_gb} GiB storage</HelperTextItem></HelperText></FormHelperText>}
            </FormGroup>
            <FormGroup label="Resource pool" fieldId={`${idPrefix}-pool`} isRequired>
                <FormSelect id={`${idPrefix}-pool`} value={pool} onChange={(_e, v) => setPool(v)}
                            validated={errorField === "resource_pool" ? "error" : "default"}>
                    {(catalog?.resource_pools || []).map(p => <FormSelectOption key={p.name} value={p.name} label={p.name} />)}
                </FormSelect>
            </FormGroup>
        </>
    );
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

export function CreateForm({ client, catalog, catalogError, onCreated, onExplain }) {
    const choice = useChoice(catalog);
    const [name, setName] = useState("");
    const [sshKeys, setSshKeys] = useState("");
    const [userData, setUserData] = useState("");
    const [networkConfig, setNetworkConfig] = useState("");
    const [startWhenReady, setStartWhenReady] = useState(false);
    const [busy, setBusy] = useState(false);
    const [error, setError] = useState(null);

    const tpl = catalog?.templates.find(t => t.name === choice.template);
    const accepts = tpl ? tpl.accepts : [];
    const nameInvalid = name !== "" && !NAME_RE.test(name);

    function submit(event) {
        event.preventDefault();
        if (busy)
            return;
        const body = { template: choice.template, size: choice.size, resource_pool: choice.pool };
        if (name)
            body.name = name;
        const keys = sshKeys.split("\n").map(k => k.trim()).filter(k => k);
        if (accepts.includes("ssh_keys") && keys.length)
            body.ssh_keys = keys;
        if (accepts.includes("user_data") && userData.trim())
            body.user_data = userData;
        if (accepts.includes("network_config") && networkConfig.trim())
            body.network_config = networkConfig;
        setBusy(true);
        setError(null);
        client.create(body)
                .then(request => {
                    setBusy(false);
                    setName("");
                    onCreated(request, startWhenReady);
                })
                .catch(e => { setBusy(false); setError(e) });
    }

    return (
        <Section id="create-form" title="Create a VM">
            <ErrorAlert error={catalogError} title="The catalog could not be read" />
            <Form onSubmit={submit} className="pd-form" aria-label="Create a VM">
                <ChoiceFields idPrefix="create" catalog={catalog} choice={choice} errorField={error?.field} />
                <FormGroup label="Name" fieldId="create-name">
                    <TextInput id="create-name" value={name} onChange={(_e, v) => setName(v)}
                               validated={nameInvalid || error?.field === "name" ? "error" : "default"}
                               aria-describedby="create-name-help" />
                    <FormHelperText>
                        <HelperText id="create-name-help">
                            <HelperTextItem variant={nameInvalid ? "error" : "default"}>
                                {nameInvalid
                                    ? "Letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63"
                                    : "Optional: the VM's name (default: the template and the request id's start)"}
                            </HelperTextItem>
                        </HelperText>
                    </FormHelperText>
                </FormGroup>
                {accepts.includes("ssh_keys") && (
                    <FormGroup label="SSH public keys" fieldId="create-ssh-keys">
                        <TextArea id="create-ssh-keys" value={sshKeys} onChange={(_e, v) => setSshKeys(v)} rows={3}
                                  validated={error?.field === "ssh_keys" ? "error" : "default"}
                                  aria-describedby="create-ssh-keys-help" resizeOrientation="vertical" />
                        <FormHelperText><HelperText id="create-ssh-keys-help"><HelperTextItem>One OpenSSH public key per line (ssh-ed25519 AAAA... comment)</HelperTextItem></HelperText></FormHelperText>
                    </FormGroup>
                )}
                {accepts.includes("user_data") && (
                    <FormGroup label="User-data" fieldId="create-user-data">
                        <TextArea id="create-user-data" value={userData} onChange={(_e, v) => setUserData(v)} rows={5}
                                  validated={error?.field === "user_data" ? "error" : "default"}
                                  aria-describedby="create-user-data-help" resizeOrientation="vertical" className="pd-mono" />
                        <FormHelperText><HelperText id="create-user-data-help"><HelperTextItem>Optional #cloud-config YAML replacing the template's (at most 64 KiB)</HelperTextItem></HelperText></FormHelperText>
                    </FormGroup>
                )}
                {accepts.includes("network_config") && (
                    <FormGroup label="Network config" fieldId="create-network-config">
                        <TextArea id="create-network-config" value={networkConfig} onChange={(_e, v) => setNetworkConfig(v)} rows={3}
                                  validated={error?.field === "network_config" ? "error" : "default"}
                                  aria-describedby="create-network-config-help" resizeOrientation="vertical" className="pd-mono" />
                        <FormHelperText><HelperText id="create-network-config-help"><HelperTextItem>Optional cloud-init network config (version 1 or 2)</HelperTextItem></HelperText></FormHelperText>
                    </FormGroup>
                )}
                <Checkbox id="create-start" label="Start when ready" isChecked={startWhenReady}
                          onChange={(_e, v) => setStartWhenReady(v)}
                          description="Start the VM as soon as its request is done" />
                <ErrorAlert error={error} title="The VM was not created" />
                <ActionGroup>
                    <Button type="submit" variant="primary" isLoading={busy} isDisabled={busy || !catalog || nameInvalid}>
                        Create
                    </Button>
                    <Button variant="secondary" onClick={() => onExplain({ template: choice.template, size: choice.size, pool: choice.pool })}
                            isDisabled={!catalog}>
                        Explain placement
                    </Button>
                </ActionGroup>
            </Form>
        </Section>
    );
}
