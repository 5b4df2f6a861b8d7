{{/*
Envoy's bootstrap and small helpers (templates/envoy.yaml). tests/chart/test_chart_envoy.py
parses the rendered bootstrap into envoy.config.bootstrap.v3.Bootstrap.
*/}}

{{/* The port of the listener the operator renders (apx.controllers.renderers.envoy, "apx-http"). */}}
{{- define "apx.envoyListenerPort" -}}
8080
{{- end }}

{{- define "apx.envoyImage" -}}
{{- $image := .Values.envoy.image }}
{{- if $image.digest -}}
{{ $image.repository }}@{{ $image.digest }}
{{- else -}}
{{ $image.repository }}:{{ $image.tag }}
{{- end }}
{{- end }}

{{/* The bootstrap; pass (dict "ctx" $ "xdsHost" "<operator Service FQDN>"). */}}
{{- define "apx.envoyBootstrap" -}}
{{- $ctx := .ctx }}
{{- $e := $ctx.Values.envoy }}
# node.id comes from --service-node (the pod name).
node:
  cluster: {{ include "apx.fullname" $ctx }}-envoy
admin:
  # Loopback only: the admin API can reconfigure and stop Envoy.
  address:
    socket_address:
      address: 127.0.0.1
      port_value: {{ $e.adminPort }}
dynamic_resources:
  ads_config:
    api_type: {{ $e.xdsApiType }}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
      - envoy_grpc:
          cluster_name: apx-xds
  lds_config:
    ads: {}
    resource_api_version: V3
  cds_config:
    ads: {}
    resource_api_version: V3
static_resources:
  clusters:
    # The operator's ADS server (every replica serves the same snapshot).
    - name: apx-xds
      type: STRICT_DNS
      connect_timeout: 5s
      load_assignment:
        cluster_name: apx-xds
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address:
                      address: {{ .xdsHost }}
                      port_value: {{ $ctx.Values.xds.port }}
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options:
              # A dead operator pod is noticed within ~40 s; Envoy then reconnects (its ADS
              # retry backs off, jittered) and keeps serving its last configuration meanwhile.
              connection_keepalive:
                interval: 30s
                timeout: 10s
    # The admin interface, for the stats listener below.
    - name: apx-envoy-admin
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: apx-envoy-admin
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address:
                      address: 127.0.0.1
                      port_value: {{ $e.adminPort }}
  listeners:
    # Probes and Prometheus: GET /ready and GET /stats/prometheus of the admin interface, nothing
    # else. Exempt from the global connection limit (ignore_global_conn_limit) so probes still
    # answer when the traffic listener is full; limited on its own by the runtime below.
    - name: apx-envoy-stats
      ignore_global_conn_limit: true
      per_connection_buffer_limit_bytes: 32768
      address:
        socket_address:
          address: 0.0.0.0
          port_value: {{ $e.statsPort }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: apx-envoy-stats
                codec_type: AUTO
                request_headers_timeout: 5s
                request_timeout: 15s
                stream_idle_timeout: 15s
                common_http_protocol_options:
                  idle_timeout: 60s
                route_config:
                  name: apx-envoy-stats
                  virtual_hosts:
                    - name: admin
                      domains: ["*"]
                      routes:
                        {{- range $path := list "/ready" "/stats/prometheus" }}
                        - match:
                            path: {{ $path }}
                            headers:
                              - name: ":method"
                                string_match:
                                  exact: GET
                          route:
                            cluster: apx-envoy-admin
                            timeout: 10s
                        {{- end }}
                        - match:
                            prefix: /
                          direct_response:
                            status: 404
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
    - name: envoy.resource_monitors.fixed_heap
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
        max_heap_size_bytes: {{ mul $e.overload.maxHeapSizeMiB 1048576 }}
    # Refuses downstream connections past the maximum, on every listener that does not ignore it.
    - name: envoy.resource_monitors.global_downstream_max_connections
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
        max_active_downstream_connections: {{ $e.overload.maxDownstreamConnections }}
  actions:
    - name: envoy.overload_actions.shrink_heap
      triggers:
        - name: envoy.resource_monitors.fixed_heap
          threshold:
            value: 0.90
    - name: envoy.overload_actions.disable_http_keepalive
      triggers:
        - name: envoy.resource_monitors.fixed_heap
          threshold:
            value: 0.92
    - name: envoy.overload_actions.stop_accepting_requests
      triggers:
        - name: envoy.resource_monitors.fixed_heap
          threshold:
            value: 0.95
layered_runtime:
  layers:
    - name: static
      static_layer:
        # Per-listener connection limits (Envoy's runtime keys for them).
        envoy.resource_limits.listener.apx-http.connection_limit: {{ $e.listenerConnectionLimit }}
        envoy.resource_limits.listener.apx-envoy-stats.connection_limit: 64
{{- end }}
