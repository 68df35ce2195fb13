/**
 * Device names for EBS attachments, per instance. EC2 reports the names in use only after an
 * attachment starts, so names handed out by this process are remembered until their volume is
 * detached. Allocation is synchronous: in one Node.js process no two callers can interleave
 * between "is it free?" and "take it", which is what keeps 50 concurrent attaches apart.
 */

const LETTERS = "abcdefghijklmnopqrstuvwxyz";

/** /dev/xvdaa ... /dev/xvdzz: 676 names, none of which EC2 reserves for root devices. */
export const DEVICE_NAMES: readonly string[] = [...LETTERS].flatMap((a) =>
  [...LETTERS].map((b) => `/dev/xvd${a}${b}`),
);

const canonical = (device: string) => (device.startsWith("/dev/") ? device : `/dev/${device}`);

export class DeviceNames {
  /** instance id -> device name -> volume id, for names this process handed out. */
  readonly #assigned = new Map<string, Map<string, string>>();
  /** instance id -> names EC2 refused as in use although its describe did not show them yet. */
  readonly #foreign = new Map<string, Set<string>>();

  /**
   * A free name for `volumeId` on `instanceId`, given the names EC2 reports in use. Returns the
   * name already assigned to that volume when there is one, undefined when none is left.
   */
  allocate(instanceId: string, inUse: Iterable<string>, volumeId: string): string | undefined {
    const mine = this.#assignedTo(instanceId);
    for (const [device, volume] of mine) if (volume === volumeId) return device;
    const taken = new Set([...inUse].map(canonical));
    for (const device of this.#foreign.get(instanceId) ?? []) taken.add(device);
    const name = DEVICE_NAMES.find((device) => !taken.has(device) && !mine.has(device));
    if (name) mine.set(name, volumeId);
    return name;
  }

  /** Names in use on the instance, counting EC2's view and this process's own assignments. */
  countInUse(instanceId: string, inUse: Iterable<string>): number {
    const all = new Set([...inUse].map(canonical));
    for (const device of this.#assignedTo(instanceId).keys()) all.add(device);
    return all.size;
  }

  /** Marks a name EC2 refused as taken by someone else, so the next allocation skips it. */
  markForeign(instanceId: string, device: string): void {
    const foreign = this.#foreign.get(instanceId) ?? new Set<string>();
    foreign.add(canonical(device));
    this.#foreign.set(instanceId, foreign);
  }

  /** Forgets the volume's name on every instance (the volume was deleted, or detached from all). */
  releaseEverywhere(volumeId: string): void {
    for (const instanceId of [...this.#assigned.keys()]) this.release(instanceId, volumeId);
  }

  release(instanceId: string, volumeId: string): void {
    const mine = this.#assigned.get(instanceId);
    if (!mine) return;
    for (const [device, volume] of mine) if (volume === volumeId) mine.delete(device);
    if (mine.size === 0) this.#assigned.delete(instanceId);
  }

  #assignedTo(instanceId: string): Map<string, string> {
    let mine = this.#assigned.get(instanceId);
    if (!mine) {
      mine = new Map();
      this.#assigned.set(instanceId, mine);
    }
    return mine;
  }
}
