"""Privileged integration harness for meshlane: two netns "pods" joined by a veth pair, a cgroup
v2 tree per pod (app + sidecar), HAProxy (uid 1337) as the sidecar, the Istio iptables baseline,
and wrappers for the meshlane agent and CLI. Everything created is registered with the cleanup
registry so it is removed on success, on failure, at exit, and by the next run after a crash."""
