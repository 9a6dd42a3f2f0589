//! pure render of the nftables rule set, and apply via nft -f
