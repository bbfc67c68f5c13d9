import { BlockList, isIP } from "node:net";

/**
 * The cloud metadata services' addresses (AWS's IPv4 and IPv6 IMDS; GCP, Azure and others use
 * the IPv4 one). On a node whose IMDS hop limit is 2 a pod reaches the node's role there, so a
 * pool's egress rule leaves them out unless told otherwise.
 */
export const METADATA_ADDRESSES = ["169.254.169.254", "fd00:ec2::254"] as const;

const familyOf = (address: string) => (isIP(address) === 6 ? "ipv6" : "ipv4");

function parse(cidr: string) {
  const [address, prefix] = cidr.split("/");
  return { address, prefix: Number(prefix), family: familyOf(address) } as const;
}

function contains(cidr: string, address: string): boolean {
  const block = parse(cidr);
  if (block.family !== familyOf(address)) return false;
  const list = new BlockList();
  list.addSubnet(block.address, block.prefix, block.family);
  return list.check(address, block.family);
}

/** The metadata addresses a CIDR block holds. */
export const metadataAddressesIn = (cidr: string) => METADATA_ADDRESSES.filter((address) => contains(cidr, address));

/** True when the block is nothing but a metadata address (an ipBlock's `except` must lie strictly inside its `cidr`). */
export const isOnlyMetadata = (cidr: string) => {
  const { prefix, family } = parse(cidr);
  return metadataAddressesIn(cidr).length > 0 && prefix === (family === "ipv6" ? 128 : 32);
};

/** NetworkPolicy peers for the allowed blocks, each with the metadata addresses it holds excepted. */
export function egressPeers(cidrBlocks: string[], allowMetadataService: boolean) {
  return cidrBlocks.map((cidr) => {
    const except = allowMetadataService
      ? []
      : metadataAddressesIn(cidr).map((address) => `${address}/${isIP(address) === 6 ? 128 : 32}`);
    return { ipBlock: except.length > 0 ? { cidr, except } : { cidr } };
  });
}
