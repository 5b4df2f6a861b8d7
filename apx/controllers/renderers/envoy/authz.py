"""Authorization: per-route ``RBACPerRoute`` for the ``envoy.filters.http.rbac`` filter.

Called by ``route_config`` and ``canary`` for every route track (the listener
carries an empty RBAC filter; every rule lives in RDS). Pure; one message per
policy artifact, built once per render.

The RBAC filter runs after ``jwt_authn`` and reads the verified JWT payload
from dynamic metadata (``envoy.filters.http.jwt_authn`` → ``<provider>`` →
``<claim>``). A request is allowed when

    ip_ok AND authenticated AND (a rule allows it  OR  defaultAction allows it)

* ``ip_ok`` — the client address (``remote_ip``: the peer address, or the
  X-Forwarded-For entry selected by ``xff_num_trusted_hops``) is inside one of
  ``ipAllowlist``'s CIDRs; true when the list is empty.
* ``authenticated`` — unless ``allowAnonymous``: a payload verified by *this
  policy's* provider is present, or the API-key header (or query parameter) is
  present. The key itself is checked by the rate-limit service, which rejects
  unknown keys (see ``ratelimit.py``). Checking the provider here as well as in
  jwt_authn keeps a canary track from accepting a token verified for the other
  track's provider.
* a rule allows a request when method and path prefix match and the caller
  holds every scope of the rule. Scopes come from the policy's ``scopesClaim``,
  either an OAuth2 space-separated string (matched with one RE2 regex per
  scope: ``(.* )?<scope>( .*)?``) or a JSON array of strings (``scp`` style).
  Without a JWT there are no scopes: a rule that requires scopes never matches
  an API-key or anonymous caller.
* ``defaultAction: deny`` — nothing else is allowed (no rule → deny all).
  ``defaultAction: allow`` — requests that match *no* rule's method and path
  are allowed too; requests that do match a rule need that rule's scopes.

Everything is expressed as one ALLOW ``RBAC``: one policy per rule
(``rule/<name>``) plus ``default-allow`` when the default is allow. A policy
with nothing to enforce (anonymous, default allow, no rules, no allowlist)
gets no RBAC at all.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as route_pb
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, string_pb2, value_pb2

from ...ir import PolicyIR
from ...models.policy import AuthzRule
from .common import JWT_METADATA_NAMESPACE, exact, pack, re2_escape, regex, uint32
from .jwt import JwtAuthn

ANY_PRINCIPAL = rbac_pb2.Principal(any=True)
ANY_PERMISSION = rbac_pb2.Permission(any=True)
NO_PRINCIPAL = rbac_pb2.Principal(not_id=ANY_PRINCIPAL)


def _and_ids(ids: list[Any]) -> Any:
    if not ids:
        return ANY_PRINCIPAL
    if len(ids) == 1:
        return ids[0]
    return rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=ids))


def _or_ids(ids: list[Any]) -> Any:
    if len(ids) == 1:
        return ids[0]
    return rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=ids))


def _or_rules(rules: list[Any]) -> Any:
    if len(rules) == 1:
        return rules[0]
    return rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=rules))


def _cidr(text: str) -> Any:
    network = ipaddress.ip_network(text, strict=False)
    return address_pb2.CidrRange(
        address_prefix=str(network.network_address), prefix_len=uint32(network.prefixlen)
    )


def _metadata(provider: str, *path: str, value: Any) -> Any:
    return rbac_pb2.Principal(
        metadata=metadata_pb2.MetadataMatcher(
            filter=JWT_METADATA_NAMESPACE,
            path=[metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in (provider, *path)],
            value=value,
        )
    )


def scope_principal(provider: str, claim: str, scope: str) -> Any:
    """The verified payload's ``claim`` holds ``scope`` (space-separated string or list of strings)."""
    word = re2_escape(scope)
    return _metadata(
        provider,
        claim,
        value=value_pb2.ValueMatcher(
            or_match=value_pb2.OrMatcher(
                value_matchers=[
                    value_pb2.ValueMatcher(string_match=regex(f"(.* )?{word}( .*)?")),
                    value_pb2.ValueMatcher(
                        list_match=value_pb2.ListMatcher(
                            one_of=value_pb2.ValueMatcher(string_match=exact(scope))
                        )
                    ),
                ]
            )
        ),
    )


def rule_permission(rule: AuthzRule) -> Any:
    """Method and path-prefix part of a rule."""
    paths = [
        rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=string_pb2.StringMatcher(prefix=p)))
        for p in sorted(set(rule.paths))
    ]
    permission = _or_rules(paths)
    methods = sorted(set(rule.methods))
    if not methods:
        return permission
    matcher = exact(methods[0]) if len(methods) == 1 else regex("|".join(methods))
    method = rbac_pb2.Permission(header=route_pb.HeaderMatcher(name=":method", string_match=matcher))
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=[method, permission]))


class Authz:
    """RBAC per policy artifact for one render."""

    def __init__(self, jwt: JwtAuthn) -> None:
        self._jwt = jwt
        self._cache: dict[str, Any | None] = {}
        # A canary track without RBAC must override the other track's config.
        self.neutral = pack(rbac_filter_pb.RBACPerRoute())

    def per_route(self, policy: PolicyIR) -> Any | None:
        """Packed ``RBACPerRoute`` for ``policy``, or None when it enforces nothing."""
        if policy.key not in self._cache:
            rbac = self._rbac(policy)
            self._cache[policy.key] = (
                None
                if rbac is None
                else pack(rbac_filter_pb.RBACPerRoute(rbac=rbac_filter_pb.RBAC(rules=rbac)))
            )
        return self._cache[policy.key]

    def _gate(self, policy: PolicyIR, provider: str | None) -> list[Any]:
        """Principals every request must satisfy: client address and authentication."""
        spec = policy.spec
        gate: list[Any] = []
        if spec.ip_allowlist:
            gate.append(_or_ids([rbac_pb2.Principal(remote_ip=_cidr(c)) for c in spec.ip_allowlist]))
        auth = spec.auth
        if not auth.allow_anonymous:
            ways: list[Any] = []
            if provider is not None:
                ways.append(_metadata(provider, value=value_pb2.ValueMatcher(present_match=True)))
            if auth.api_key is not None:
                ways.append(
                    rbac_pb2.Principal(
                        header=route_pb.HeaderMatcher(name=auth.api_key.header.lower(), present_match=True)
                    )
                )
                if auth.api_key.query_parameter is not None:
                    param = re2_escape(auth.api_key.query_parameter)
                    ways.append(
                        rbac_pb2.Principal(
                            header=route_pb.HeaderMatcher(
                                name=":path", string_match=regex(f"[^?]*\\?(.*&)?{param}=[^&]+(&.*)?")
                            )
                        )
                    )
            if ways:
                gate.append(_or_ids(ways))
        return gate

    def _rbac(self, policy: PolicyIR) -> Any | None:
        spec = policy.spec
        provider = self._jwt.provider_of(policy)
        gate = self._gate(policy, provider)
        rules = spec.authz.rules
        default_allow = spec.authz.default_action == "allow"
        if default_allow and not rules and not gate:
            return None
        jwt = spec.auth.jwt
        policies: dict[str, Any] = {}
        for rule in rules:
            scopes: list[Any] = []
            if rule.scopes:
                if provider is None or jwt is None:
                    policies[f"rule/{rule.name}"] = rbac_pb2.Policy(
                        permissions=[rule_permission(rule)], principals=[NO_PRINCIPAL]
                    )
                    continue
                scopes = [scope_principal(provider, jwt.scopes_claim, s) for s in sorted(set(rule.scopes))]
            policies[f"rule/{rule.name}"] = rbac_pb2.Policy(
                permissions=[rule_permission(rule)], principals=[_and_ids(gate + scopes)]
            )
        if default_allow:
            unmatched = (
                ANY_PERMISSION
                if not rules
                else rbac_pb2.Permission(not_rule=_or_rules([rule_permission(r) for r in rules]))
            )
            policies["default-allow"] = rbac_pb2.Policy(permissions=[unmatched], principals=[_and_ids(gate)])
        return rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies=policies)
