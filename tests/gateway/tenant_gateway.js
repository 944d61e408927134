// The gateway's policy (njs): who a request's key belongs to, and the body it forwards.
// KEYS is prepended by tests/gateway/nginx.py: key -> {tenant, salt} or {operator: true}.
// A tenant's request gets `cache_salt` set to its tenant's salt, extended by the salt the
// client sent (if any) after a "." (vLLM refuses "/" in a salt): the client can partition its own tenant's cache further,
// never reach another tenant's. The operator's requests (the harness's own key) pass unchanged.

function who(r) {
    var auth = r.headersIn['Authorization'] || '';
    if (auth.indexOf('Bearer ') !== 0) {
        return null;
    }
    var entry = KEYS[auth.substring(7)];
    return entry === undefined ? null : entry;
}

function identity(r) {
    var entry = who(r);
    if (entry === null) {
        return '';
    }
    return entry.operator ? 'operator' : 'tenant:' + entry.tenant;
}

function operator(r) {
    var entry = who(r);
    return entry !== null && entry.operator ? '1' : '';
}

function body(r) {
    var text = r.requestText;
    if (text === undefined || text === null) {
        return '';
    }
    var entry = who(r);
    if (entry === null || entry.operator) {
        return text;
    }
    var data;
    try {
        data = JSON.parse(text);
    } catch (e) {
        return text;
    }
    if (data === null || typeof data !== 'object' || Array.isArray(data)) {
        return text;
    }
    var own = data.cache_salt;
    data.cache_salt = entry.salt + (typeof own === 'string' && own.length > 0 ? '.' + own : '');
    return JSON.stringify(data);
}

export default {identity, operator, body};
