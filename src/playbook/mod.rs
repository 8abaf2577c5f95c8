//! Playbooks: YAML files that become rollout phases.
