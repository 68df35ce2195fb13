package main

// kubernetesVersion is the release whose validation code go.mod pins; keep the two in step.
const kubernetesVersion = "v1.37.2"
