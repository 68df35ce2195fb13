/** The topology keys of an EBS volume's zone: the well-known one and the official driver's own. */
export const ZONE_KEYS = ["topology.kubernetes.io/zone", "topology.ebs.csi.aws.com/zone"] as const;
